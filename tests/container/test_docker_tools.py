"""The image tooling without a docker engine: build_and_push.sh's checks, shellcheck, the cached-build
hash, and the `docker run` command the runner builds for a job."""
import os
import shutil
import subprocess

import pytest

from conftest import PROJECT_DIR, TINY_HYPERPARAMETERS, make_dataset
from moto_server import moto_url, reset  # noqa: F401 - moto_url is a fixture

SCRIPT = PROJECT_DIR / "build_and_push.sh"
SHELL_SCRIPTS = [SCRIPT, PROJECT_DIR / "scripts" / "make_base_image.sh", PROJECT_DIR / ".ci" / "run",
                 PROJECT_DIR / "docker" / "entrypoint.sh"]


def run_script(*args, env=None):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


def test_help_lists_every_option():
    result = run_script("--help")
    assert result.returncode == 0
    for option in ("--name", "--tag", "--region", "--platform", "--no-push", "BAKE_WEIGHTS", "TORCH_INDEX_URL"):
        assert option in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--name"], "--name needs a value"),
    (["--name", "Not_Valid!"], "not a valid repository name"),
])
def test_bad_arguments_are_refused_clearly(args, message):
    result = run_script(*args)
    assert result.returncode == 1
    assert message in result.stderr


def test_missing_docker_is_reported(tmp_path):
    # A PATH with the shell tools the script needs but no docker.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "git", "date"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(["/bin/bash", str(SCRIPT), "--no-push"], capture_output=True, text=True, timeout=60,
                            env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "docker not found" in result.stderr


@pytest.fixture
def docker_log(tmp_path):
    """A `docker` command that records its arguments (the build itself is what the container tests run):
    (environment for the script, log file)."""
    bin_dir = tmp_path / "fake-docker"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (bin_dir / "docker").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "IMAGE_URI_FILE": str(tmp_path / ".image-uri")}, log


def test_build_is_for_sagemakers_platform_and_no_push_keeps_the_ecr_uri(docker_log, tmp_path):
    env, log = docker_log
    ecr_uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier:pushed"
    (tmp_path / ".image-uri").write_text(ecr_uri + "\n")
    result = run_script("--no-push", "--tag", "t1", env=env)
    assert result.returncode == 0, result.stderr
    build = [line for line in log.read_text().splitlines() if line.startswith("build ")]
    assert build == ["build --platform linux/amd64 -f docker/Dockerfile -t image-classifier:t1 "
                     "-t image-classifier:latest ."]  # an Apple-silicon build would be arm64 otherwise
    # The launcher sends .image-uri to CreateTrainingJob: a local name there would fail every job.
    assert (tmp_path / ".image-uri").read_text().strip() == ecr_uri
    assert result.stdout.strip().splitlines()[-1] == "image-classifier:t1"


@pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI is not installed (pip install awscli)")
def test_push_to_a_china_region_uses_its_registry_domain(docker_log, moto_url, tmp_path):
    env, log = docker_log
    reset(moto_url)
    env.update(AWS_ENDPOINT_URL=moto_url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    result = run_script("--region", "cn-north-1", "--tag", "t2", "--platform", "linux/arm64", env=env)
    assert result.returncode == 0, result.stderr
    uri = "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/image-classifier:t2"
    assert (tmp_path / ".image-uri").read_text().strip() == uri
    assert f"build --platform linux/arm64 -f docker/Dockerfile -t {uri} " in log.read_text()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_are_shellcheck_clean(script):
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_dockerfile_needs_no_buildkit_syntax():
    dockerfile = (PROJECT_DIR / "docker" / "Dockerfile").read_text()
    assert "--mount" not in dockerfile and "# syntax=" not in dockerfile
    assert 'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/entrypoint.sh"]' in dockerfile
    assert "AWS_EC2_METADATA_DISABLED" not in dockerfile  # off-AWS setting, not for SageMaker


def test_cached_tag_follows_the_image_inputs(tmp_path, monkeypatch):
    from launcher import docker_image

    # A copy of the inputs, so the test can change them.
    for name in docker_image.IMAGE_INPUTS:
        source = PROJECT_DIR / name
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, target)
    monkeypatch.setattr(docker_image, "PROJECT_DIR", tmp_path)
    args = {"BASE_IMAGE": "base:1"}
    tag = docker_image.cached_tag(args)
    assert tag.startswith("image-classifier:src-") and tag == docker_image.cached_tag(dict(args))
    # Byte code and build leftovers are not inputs.
    (tmp_path / "container_src" / "image_classifier" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "container_src" / "image_classifier" / "__pycache__" / "x.pyc").write_bytes(b"1")
    assert docker_image.cached_tag(args) == tag
    assert docker_image.cached_tag({"BASE_IMAGE": "base:2"}) != tag
    with open(tmp_path / "container_src" / "image_classifier" / "constants.py", "a") as source:
        source.write("# changed\n")
    assert docker_image.cached_tag(args) != tag


def test_configured_image_reads_what_build_and_push_recorded(tmp_path, monkeypatch):
    import launcher
    from launcher import docker_image

    monkeypatch.setattr(launcher, "IMAGE_URI_FILE", tmp_path / ".image-uri")
    monkeypatch.delenv("IMAGE_URI_FILE", raising=False)
    assert docker_image.configured_image() == "image-classifier:latest"
    (tmp_path / ".image-uri").write_text("123456789012.dkr.ecr.eu-west-1.amazonaws.com/image-classifier:abc\n")
    assert docker_image.configured_image() == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/image-classifier:abc"
    (tmp_path / "elsewhere").write_text("image-classifier:t9")
    monkeypatch.setenv("IMAGE_URI_FILE", str(tmp_path / "elsewhere"))
    assert docker_image.configured_image() == "image-classifier:t9"


def test_training_command_runs_the_job_like_sagemaker(tmp_path, monkeypatch):
    from launcher.local import docker as local_docker, trees

    monkeypatch.setattr(local_docker, "gpu_args", lambda: [])
    data = make_dataset(tmp_path / "data", per_split={"train": 1})
    job = trees.prepare_job(tmp_path / "jobs", "my_job", {"train": data}, TINY_HYPERPARAMETERS)
    command = local_docker.training_command(job, "img:1")
    assert command[:3] == ["docker", "run", "--rm"]
    assert command[-2:] == ["img:1", "train"]
    assert command[command.index("--hostname") + 1] == "algo-1"
    mounts = [command[i + 1] for i, arg in enumerate(command) if arg == "-v"]
    assert f"{job.dir.resolve()}:/opt/ml" in mounts
    assert f"{data.resolve()}:{data.resolve()}:ro" in mounts  # the channel link resolves in the container
    assert command[command.index("--name") + 1].startswith("my_job-train-")


def test_channel_that_vanished_is_a_clear_error(tmp_path):
    from launcher import LauncherError
    from launcher.local import docker as local_docker, trees

    data = make_dataset(tmp_path / "data", per_split={"train": 1})
    job = trees.prepare_job(tmp_path / "jobs", "j", {"train": data}, TINY_HYPERPARAMETERS)
    shutil.rmtree(data)
    with pytest.raises(LauncherError, match="Channel 'train'"):
        local_docker.training_command(job, "img:1")
