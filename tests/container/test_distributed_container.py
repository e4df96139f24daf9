"""The real image and GPUs: its CUDA build, the loud failure of `serve` and `train` on a fake driver, and
two hosts through the SageMaker SDK's own local mode (two containers under docker-compose)."""
import json
import re
import shutil
import subprocess
import tarfile

import pytest

from conftest import DRIVER_BANNER, TINY_HYPERPARAMETERS, make_dataset
from test_container import containers_of, image  # noqa: F401 - the content-hashed image fixture
from launcher import docker_image
from launcher.local import docker as local_docker, trees
from image_classifier.cuda_check import PROBE_ROOT_ENV

pytestmark = [pytest.mark.docker, pytest.mark.slow]
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"  # local mode never assumes it


def docker_run(*args, timeout=300):
    return subprocess.run(["docker", "run", "--rm", *args], capture_output=True, text=True, timeout=timeout)


def fake_driver_tree(root):
    """Driver 470 and one GPU, as /proc and /dev show them on a SageMaker ml.g4dn host."""
    (root / "proc" / "driver" / "nvidia").mkdir(parents=True)
    (root / "proc" / "driver" / "nvidia" / "version").write_text(DRIVER_BANNER)
    (root / "dev").mkdir()
    (root / "dev" / "nvidia0").write_text("")
    return root


def test_the_image_torch_is_a_cuda_12_build(image):  # noqa: F811
    result = docker_run("--entrypoint", "python", image, "-c",
                        "import json, torch, torchvision; print(json.dumps([torch.__version__, torch.version.cuda, "
                        "torchvision.__version__]))")
    assert result.returncode == 0, result.stderr
    torch_version, cuda, torchvision_version = json.loads(result.stdout.strip().splitlines()[-1])
    assert cuda.split(".")[0] == "12", cuda
    assert torch_version.startswith("2.10.0") and torchvision_version.startswith("0.25.0")


def test_serve_and_train_in_the_image_fail_on_a_driver_torch_cannot_use(image, tmp_path):  # noqa: F811
    driver = fake_driver_tree(tmp_path / "nvidia")
    served = docker_run("-v", f"{driver}:/fake-driver:ro", "-e", f"{PROBE_ROOT_ENV}=/fake-driver", image, "serve")
    assert served.returncode == 2, served.stdout[-2000:] + served.stderr[-2000:]
    assert "serve: NVIDIA GPUs are present (driver 470.82.01" in served.stderr
    assert "a CUDA 12.8 build, which needs NVIDIA driver 525 or newer" in served.stderr

    data = make_dataset(tmp_path / "data", {"train": 2, "valid": 1})
    job = trees.prepare_job(tmp_path / "jobs", "fake-driver", {"train": data}, TINY_HYPERPARAMETERS)
    fake_driver_tree(job.dir / "fake-driver")  # inside the job tree, which is mounted at /opt/ml
    exit_code = local_docker.train(job, image=image, echo=False,
                                           env={PROBE_ROOT_ENV: "/opt/ml/fake-driver"})
    assert exit_code != 0 and not job.succeeded
    assert job.failure_reason.startswith("NVIDIA GPUs are present (driver 470.82.01")
    assert "Driver 470 runs CUDA 11.4 at most." in job.failure_reason
    assert not re.search(r"^epoch=", job.log_file.read_text(), re.MULTILINE)


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="the SageMaker SDK's local mode needs docker-compose (Debian: apt-get install docker-compose)")
def test_sdk_local_mode_trains_on_two_hosts_into_one_model(image, tmp_path, monkeypatch, capfd):  # noqa: F811
    import boto3
    from sagemaker.estimator import Estimator
    from sagemaker.local import LocalSession

    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    boto_session = boto3.Session(region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    session = LocalSession(boto_session=boto_session, sagemaker_config={
        "SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}})
    (tmp_path / "sm").mkdir()
    session.config = {"local": {"local_code": True, "container_root": str(tmp_path / "sm")}}
    data = make_dataset(tmp_path / "data", {"train": 6, "valid": 3, "test": 3})
    before = containers_of(image)
    estimator = Estimator(image_uri=image, role=ROLE, instance_count=2, instance_type="local",
                          hyperparameters=dict(TINY_HYPERPARAMETERS, epochs="1"), sagemaker_session=session,
                          output_path=f"file://{tmp_path / 'output'}", debugger_hook_config=False,
                          disable_profiler=True)
    try:
        estimator.fit({"train": f"file://{data}"}, wait=True, logs=True)
    finally:
        leftovers = containers_of(image) - before  # docker-compose leaves the stopped containers behind
        if leftovers:
            docker_image.docker("rm", "-f", *leftovers, check=False, timeout=120)
    log = capfd.readouterr().out
    assert "2 host(s) x 1 process(es) under torchrun" in log
    assert log.count("epoch=1 ") == 1 and log.count("test_loss=") == 1  # rank 0 alone prints
    model_tar = estimator.model_data[len("file://"):]
    with tarfile.open(model_tar) as tar:
        assert sorted(tar.getnames()) == ["model.json", "model.pth"]
        config = json.load(tar.extractfile("model.json"))
    assert 0 <= config["metrics"]["test_acc"] <= 1


def test_launch_py_trains_on_two_containers_of_the_image(image, tmp_path, monkeypatch, capfd):  # noqa: F811
    import launch

    recorded = tmp_path / "image-uri"
    recorded.write_text(image)  # what build_and_push.sh records
    monkeypatch.setenv("IMAGE_URI_FILE", str(recorded))
    data = make_dataset(tmp_path / "data", {"train": 6, "valid": 3, "test": 3})
    hps = [f"--hp={key}={value}" for key, value in dict(TINY_HYPERPARAMETERS, epochs="1").items()]
    assert launch.main(["train", "--local", "docker", "--instance-count", "2", "--data", str(data),
                        "--job-name", "two-containers", "--jobs-dir", str(tmp_path / "jobs"), *hps]) == 0
    out = capfd.readouterr().out
    assert "2 containers on network" in out and "Training job two-containers completed in " in out
    master = tmp_path / "jobs" / "two-containers"
    # the job's own lines are in its log (the terminal shows progress and the summary)
    assert '2 host(s) x 1 process(es) under torchrun, master "algo-1"' in (master / "train.log").read_text()
    second = master / "hosts" / "algo-2"
    assert (master / "model.tar.gz").is_file() and not any((second / "model").iterdir())
    assert (second / "output" / "success").is_file()
    assert not docker_image.docker("network", "ls", "-q", "--filter", "name=two-containers").stdout.strip()
