"""The real image, run the way SageMaker runs it: `docker run IMAGE train|serve`, the SageMaker SDK's own
local mode, and build_and_push.sh (for real with --no-push; its AWS calls against moto).

The image is built once per tree (launcher.docker_image: the tag carries a hash of its inputs). Skipped,
with the reason, where no docker engine runs or the disk is too short to build it.
"""
import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from conftest import PROJECT_DIR, TINY_CLASSES, TINY_HYPERPARAMETERS, make_dataset
from image_classifier import constants
from launcher import LauncherError, docker_image
from launcher.local import docker as local_docker, trees
from training_state import assert_same_training_state, load_checkpoint

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REQUIRED_ENV = "IMAGE_CLASSIFIER_REQUIRE_DOCKER_TESTS"  # "1" (.ci/run): no docker is a failure, not a skip
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"  # local mode never assumes it
MOTO_ACCOUNT = "123456789012"
REGION = "us-east-1"
CLASS_LABELS = {folder.split(".", 1)[1].replace("_", " ") for folder in TINY_CLASSES}


def cannot_run(reason):
    """Skip the container tests, saying why; where they are required (CI), fail instead."""
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"container tests cannot run ({REQUIRED_ENV}=1): {reason}")
    pytest.skip(f"container tests skipped: {reason}")


@pytest.fixture(scope="session")
def image():
    """The content-hashed image of this tree, built when missing (the first build takes a while)."""
    reason = docker_image.engine_problem()
    if reason:
        cannot_run(reason)
    build_args = docker_image.default_build_args()
    tag = docker_image.cached_tag(build_args)
    if not docker_image.image_exists(tag):
        free = shutil.disk_usage(docker_image.docker_root()).free
        if free < docker_image.BUILD_FREE_BYTES:
            cannot_run(f"{free / 1e9:.1f} GB free for docker, building the image needs "
                       f"{docker_image.BUILD_FREE_BYTES / 1e9:.0f} GB")
        try:
            docker_image.build(tag, build_args, PROJECT_DIR / "build" / "docker-build.log")
        except LauncherError as error:
            if "no space left on device" in str(error).lower():
                cannot_run(f"the disk filled up during the image build: {error}")
            pytest.fail(str(error))
        docker_image.remove_stale_images(keep=tag)
    return tag


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png_bytes(colour=(200, 30, 30), size=24):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def http(url, body=None, headers=None, timeout=60):
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def assert_top_k(labels, k):
    assert len(labels) == k
    assert {item["label"] for item in labels} <= CLASS_LABELS
    probabilities = [item["probability"] for item in labels]
    assert probabilities == sorted(probabilities, reverse=True) and 0 <= probabilities[-1] <= probabilities[0] <= 1


# ------------------------------------------------------------------------------ what the image holds
def pip_in_image(image, *args):
    return subprocess.run(["docker", "run", "--rm", "--entrypoint", "pip", image, *args, "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=300)


def test_the_image_holds_the_image_lock_and_no_development_package(image):
    shown = pip_in_image(image, "show", "moto", "pytest", "sagemaker", "flask")
    assert shown.returncode == 1 and shown.stdout == "", shown.stdout
    missing = re.search(r"Package\(s\) not found: (.*)", shown.stderr)
    assert missing and set(missing[1].split(", ")) == {"moto", "pytest", "sagemaker", "flask"}, shown.stderr
    listed = pip_in_image(image, "list", "--format=freeze")
    assert listed.returncode == 0, listed.stderr
    installed = {line for line in listed.stdout.splitlines() if not line.startswith(("pip==", "wheel=="))}
    locked = {line for line in (PROJECT_DIR / "requirements-image.lock").read_text().splitlines()
              if line and not line.startswith("#")}
    assert installed == locked | {"image-classifier==0.1.0"}


# ------------------------------------------------------------------------------ docker run IMAGE train
def run_job(image, tmp_path, name, hyperparameters):
    data = make_dataset(tmp_path / "data")
    job = trees.prepare_job(tmp_path / "jobs", name, {"train": data},
                                     dict(TINY_HYPERPARAMETERS, **hyperparameters))
    exit_code = local_docker.train(job, image=image, echo=False)
    return job, exit_code


def test_train_in_the_image_writes_the_model_and_success(image, tmp_path):
    job, exit_code = run_job(image, tmp_path, "ok", {"epochs": "1"})
    log = job.log_file.read_text(errors="replace")
    assert exit_code == 0, log[-3000:]
    assert (job.dir / "model" / "model.pth").is_file()
    metadata = json.loads((job.dir / "model" / "model.json").read_text())
    assert metadata["arch"] == "resnet18"
    assert job.succeeded and job.failure_reason is None
    metrics = trees.finish(job)  # the launcher's metric regexes read the container's output
    assert 0 <= metrics["test_acc"] <= 1 and "train_loss" in metrics
    assert job.model_tar.is_file()


def test_bad_hyperparameter_in_the_image_fails_with_a_reason(image, tmp_path):
    job, exit_code = run_job(image, tmp_path, "bad", {"lr": "fast"})
    assert exit_code != 0
    assert not job.succeeded
    assert "lr" in job.failure_reason
    assert not (job.dir / "model" / "model.pth").exists()


# 8 pictures per class and batch 8: 3 steps per epoch; the stop lands inside epoch 2.
STOP_DATA, STOP_AT = {"train": 8, "valid": 2, "test": 2}, 5


def test_docker_stop_then_restart_on_the_same_opt_ml_resumes_bit_for_bit(image, tmp_path):
    """SageMaker stops a job (StopTrainingJob, spot interruption) with SIGTERM, which tini (-g) passes to the
    entry point's whole process group: the training script, not only PID 1, must get it and finish its
    checkpoint before the container ends. Here the job sends that SIGTERM to its own process group after global
    step STOP_AT (the stop setting, passed into the container), so the stop lands inside epoch 2 on any machine.
    A new container on the same /opt/ml then resumes from that step and ends with exactly the state of an
    uninterrupted run in the image."""
    data = make_dataset(tmp_path / "data", STOP_DATA)
    hps = dict(TINY_HYPERPARAMETERS, epochs="3", workers="2")
    reference = trees.prepare_job(tmp_path / "jobs", "reference", {"train": data}, hps)
    assert local_docker.train(reference, image=image, echo=False) == 0, reference.log_file.read_text()[-3000:]

    job = trees.prepare_job(tmp_path / "jobs", "stopped", {"train": data}, hps)
    exit_code = local_docker.train(job, image=image, echo=False, env={constants.STOP_AT_STEP_ENV: str(STOP_AT)})
    log = job.log_file.read_text(errors="replace")
    assert exit_code == 143, log[-3000:]  # 128 + SIGTERM
    assert f"{constants.STOP_AT_STEP_ENV}={STOP_AT}: sending SIGTERM" in log and "SIGTERM received" in log, log[-3000:]
    assert f"Stopped by SIGTERM in epoch 2 at step 2 (global step {STOP_AT}); checkpoint saved" in log, log[-3000:]
    assert load_checkpoint(job.dir / "checkpoints" / "checkpoint.pth")["step"] == STOP_AT
    assert not job.succeeded and "checkpoint is saved" in job.failure_reason

    job = trees.prepare_job(tmp_path / "jobs", "stopped", {"train": data}, hps)  # the same tree
    assert local_docker.train(job, image=image, echo=False) == 0, job.log_file.read_text()[-3000:]
    assert job.succeeded
    assert re.search(rf"Resuming from /opt/ml/checkpoints/checkpoint\.pth at global step {STOP_AT} \(epoch 2, step 2 "
                     "of 3\)", job.log_file.read_text(errors="replace"))
    assert_same_training_state(load_checkpoint(job.dir / "checkpoints" / "checkpoint.pth"),
                               load_checkpoint(reference.dir / "checkpoints" / "checkpoint.pth"))


# ------------------------------------------------------------------------------ docker run IMAGE serve
def test_serve_in_the_image_answers_ping_and_invocations(image, trained_model_dir):
    port = free_port()
    local_docker.serve(trained_model_dir, port, detach=True, image=image,
                        env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        assert http(f"{base}/ping")[0] == 200
        status, body = http(f"{base}/invocations", png_bytes(),
                            {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"})
        assert status == 200, body
        assert_top_k(json.loads(body)["predictions"][0], 2)
        batch = json.dumps({"instances": [{"b64": base64.b64encode(png_bytes(c)).decode()}
                                          for c in ((200, 30, 30), (30, 30, 200))]}).encode()
        status, body = http(f"{base}/invocations", batch, {"Content-Type": "application/json"})
        assert status == 200 and len(json.loads(body)["predictions"]) == 2
        status, body = http(f"{base}/invocations", b"hello", {"Content-Type": "text/plain"})
        assert status == 415 and "Traceback" not in body.decode()
        assert http(f"{base}/ping")[0] == 200  # still serving after a bad request
    finally:
        assert local_docker.stop(port)
    assert not local_docker.container_running(local_docker.serving_container(port))


# ------------------------------------------------------------------ launch.py --local docker, as in README
def test_launch_py_trains_deploys_and_predicts_in_the_image(image, tmp_path, monkeypatch, capsys):
    import launch

    recorded = tmp_path / "image-uri"
    recorded.write_text(image)  # what build_and_push.sh records
    monkeypatch.setenv("IMAGE_URI_FILE", str(recorded))
    data = make_dataset(tmp_path / "data")
    hps = [f"--hp={key}={value}" for key, value in dict(TINY_HYPERPARAMETERS, epochs="1").items()]
    assert launch.main(["train", "--local", "--data", str(data), "--job-name", "in-image",
                        "--jobs-dir", str(tmp_path / "jobs"), *hps]) == 0
    out = capsys.readouterr().out
    assert f"local mode: docker ({image})" in out and "Training job in-image completed in " in out
    model = tmp_path / "jobs" / "in-image" / "model.tar.gz"
    port = free_port()
    assert launch.main(["deploy", "--local", "docker", "--model", str(model), "--port", str(port), "--detach"]) == 0
    assert "Model server ready" in capsys.readouterr().out
    try:
        picture = tmp_path / "red.png"
        picture.write_bytes(png_bytes())
        assert launch.main(["predict", "--local", "--port", str(port), "--top-k", "2", "--json", str(picture)]) == 0
        assert_top_k(json.loads(capsys.readouterr().out)["predictions"][0], 2)
    finally:
        assert launch.main(["delete", "--local", "--port", str(port)]) == 0
    assert "Stopped the model server container" in capsys.readouterr().out
    assert not local_docker.container_running(local_docker.serving_container(port))


# ------------------------------------------------------------------------- the SageMaker SDK's local mode
def containers_of(image):
    return set(docker_image.docker("ps", "-aq", "--filter", f"ancestor={image}").stdout.split())


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="the SageMaker SDK's local mode needs docker-compose (Debian: apt-get install docker-compose)")
def test_sagemaker_sdk_local_mode_trains_deploys_and_predicts(image, tmp_path, monkeypatch):
    import boto3
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.estimator import Estimator
    from sagemaker.local import LocalSession
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    boto_session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    session = LocalSession(boto_session=boto_session, sagemaker_config={
        "SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}})
    port = free_port()
    (tmp_path / "sm").mkdir()
    session.config = {"local": {"local_code": True, "serving_port": port, "container_root": str(tmp_path / "sm")}}

    data = make_dataset(tmp_path / "data")
    before = containers_of(image)
    estimator = Estimator(image_uri=image, role=ROLE, instance_count=1, instance_type="local",
                          hyperparameters=dict(TINY_HYPERPARAMETERS, epochs="1"), sagemaker_session=session,
                          output_path=f"file://{tmp_path / 'output'}", debugger_hook_config=False,
                          disable_profiler=True)
    estimator.fit({"train": f"file://{data}"}, wait=True, logs=False)
    assert estimator.model_data.startswith("file://") and estimator.model_data.endswith("model.tar.gz")

    model = Model(image_uri=image, model_data=estimator.model_data, role=ROLE, sagemaker_session=session,
                  env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}, predictor_cls=Predictor)
    predictor = model.deploy(initial_instance_count=1, instance_type="local",
                             serializer=IdentitySerializer("image/png"), deserializer=JSONDeserializer())
    try:
        deadline = time.monotonic() + 180  # /ping answers before the worker has loaded the model
        while True:
            try:
                result = predictor.predict(png_bytes(), custom_attributes="top_k=3")
                break
            except Exception:  # noqa: BLE001 - the SDK raises its own and urllib3 errors while loading
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        assert_top_k(result["predictions"][0], 3)
    finally:
        predictor.delete_endpoint()  # stops the serving container (and deletes the endpoint config)
        model.delete_model()
        # docker-compose leaves the stopped training and serving containers behind.
        leftovers = containers_of(image) - before
        if leftovers:
            docker_image.docker("rm", "-f", *leftovers, check=False, timeout=120)


# -------------------------------------------------------------------------------------- build_and_push.sh
def build_and_push(*args, env=None, timeout=1800):
    build_args = [arg for key, value in docker_image.default_build_args().items()
                  for arg in ("--build-arg", f"{key}={value}")]
    return subprocess.run([str(PROJECT_DIR / "build_and_push.sh"), *args, "--", *build_args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def remove_images(*references):
    subprocess.run(["docker", "rmi", *references], capture_output=True, timeout=120)


def test_build_and_push_no_push_builds_a_local_image(image, tmp_path):
    uri_file = tmp_path / "image-uri"
    result = build_and_push("--no-push", "--name", "image-classifier-test", "--tag", "t1",
                            env={"IMAGE_URI_FILE": str(uri_file)})
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert result.stdout.strip().splitlines()[-1] == "image-classifier-test:t1"
        # A local name is never recorded for the launcher, which would send it to SageMaker (issue 11).
        assert not uri_file.exists()
        labels = json.loads(docker_image.docker("image", "inspect", "--format", "{{json .Config.Labels}}",
                                                "image-classifier-test:latest").stdout)
        assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    finally:
        remove_images("image-classifier-test:t1", "image-classifier-test:latest")


@pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI is not installed (Debian: apt-get install awscli)")
def test_build_and_push_aws_calls_against_moto(image, tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    aws_env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
               "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    registry_image = f"{MOTO_ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/image-classifier-test"
    try:
        result = build_and_push("--name", "image-classifier-test", "--tag", "t2",
                                env=dict(aws_env, AWS_ENDPOINT_URL=endpoint, IMAGE_URI_FILE=str(tmp_path / "uri")))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        assert "creating ECR repository image-classifier-test" in output
        assert "SKIPPING docker login and push" in output  # said so: no registry behind an emulator
        assert result.stdout.strip().splitlines()[-1] == f"{registry_image}:t2"
        ecr = boto3.client("ecr", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        repository = ecr.describe_repositories(repositoryNames=["image-classifier-test"])["repositories"][0]
        assert repository["imageScanningConfiguration"]["scanOnPush"] is True
    finally:
        server.stop()
        remove_images(f"{registry_image}:t2", f"{registry_image}:latest")
