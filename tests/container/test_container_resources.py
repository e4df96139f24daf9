"""Issue 31, item 1: the image under docker's memory limit and CPU quota. A container with a 3 GB limit starts
the workers that 3 GB holds and serves its heaviest requests (every worker decoding a 49 MP picture at once)
with no out-of-memory kill; one with `--cpus 1` starts the workers one core allows. ResNet-50 (random weights),
the model whose workers hold about 1.2 GB each."""
import concurrent.futures
import re
import subprocess
import time

import pytest
import torch

import serving_samples as samples
from image_classifier.model import ModelConfig, build_model, save_artifact
from test_container import free_port, http, image  # noqa: F401  (image: the fixture building this tree's image)

pytestmark = [pytest.mark.docker, pytest.mark.slow]
READY_SECONDS = 240
STARTED = re.compile(r"Starting multi-model-server on \S+: engine (\w+), (\d+) worker\(s\) x (\d+) torch thread")


@pytest.fixture(scope="module")
def resnet50_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resnet50") / "model"
    torch.manual_seed(0)
    save_artifact(folder, build_model("resnet50", 133), ModelConfig("resnet50", [f"class {i}" for i in range(133)], 224))
    folder.chmod(0o755)
    return folder


def docker(*args, timeout=120):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


class Container:
    """`docker run -d IMAGE serve` with the model mounted as SageMaker mounts it, and `limits` (docker flags)."""

    def __init__(self, image, model_dir, *limits):
        self.name, self.port = f"ic-resources-{free_port()}", free_port()
        started = docker("run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:8080",
                         "-v", f"{model_dir}:/opt/ml/model:ro", *limits, image, "serve")
        assert started.returncode == 0, started.stderr

    def running(self):
        return docker("inspect", "-f", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def log(self):
        result = docker("logs", self.name)
        return result.stdout + result.stderr

    def invoke(self, body, content_type="image/jpeg"):
        return http(f"http://127.0.0.1:{self.port}/invocations", body, {"Content-Type": content_type}, timeout=120)[0]

    def wait_ready(self, picture):
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline and self.running():
            try:
                if self.invoke(picture) == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        pytest.fail(f"the container never answered a prediction:\n{self.log()[-4000:]}")

    def started_with(self):
        """(engine, workers, torch threads) from serve's start line."""
        found = STARTED.search(self.log())
        assert found, self.log()[-3000:]
        return found[1], int(found[2]), int(found[3])

    def oom_kills(self):
        """Processes the kernel killed for memory in the container's cgroup (v1 memory.oom_control, v2 memory.events)."""
        shown = docker("exec", self.name, "sh", "-c", "cat /sys/fs/cgroup/memory/memory.oom_control "
                       "/sys/fs/cgroup/memory.events 2>/dev/null").stdout
        counts = [int(n) for n in re.findall(r"^oom_kill (\d+)$", shown, re.MULTILINE)]
        assert counts, f"no oom_kill counter in the container's cgroup: {shown!r}"
        return sum(counts)

    def remove(self):
        docker("rm", "-f", self.name)


@pytest.fixture
def containers():
    started = []
    yield lambda *args: started.append(Container(*args)) or started[-1]
    for container in started:
        container.remove()


def test_a_3_gb_container_serves_its_heaviest_requests_without_an_oom_kill(image, resnet50_model, containers):
    served = containers(image, resnet50_model, "--memory", "3g", "--memory-swap", "3g")
    photo = samples.jpeg((500, 375))
    served.wait_ready(photo)
    engine, workers, _ = served.started_with()
    assert workers == 1, served.log()[-3000:]  # 2 cores here, but 3 GB holds one 1.2 GB worker beside the rest
    assert "MiB of memory (cgroup memory limit)" in served.log() and "-Xmx256m" in served.log()
    # Every worker twice over, each request a 49 MP lossless WebP decoded whole (the most a request may hold).
    bomb = samples.pixel_bomb_webp()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda body: served.invoke(body, "application/x-image"), [bomb] * 8 + [photo] * 4))
    assert statuses == [200] * 12, statuses
    assert served.oom_kills() == 0 and served.running() and served.invoke(photo) == 200


def test_one_cpu_of_quota_starts_the_workers_one_core_allows(image, resnet50_model, containers):
    served = containers(image, resnet50_model, "--cpus", "1")
    served.wait_ready(samples.jpeg((500, 375)))
    assert served.started_with()[1:] == (1, 1), served.log()[-3000:]  # the host's 2 cores are in its CPU set
    assert "Resources: 1 core(s)" in served.log()
