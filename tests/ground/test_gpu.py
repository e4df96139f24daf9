"""GPUs: the loud failure where the host has GPUs that torch cannot use (a fake driver tree stands in for
/proc and /dev), and, marked `gpu` (skipped without CUDA), AMP training, NCCL data parallel on every
visible GPU and serving on the GPU (bench/gpu_check.sh runs them on a GPU machine)."""
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_classifier import cuda_check
from launcher.local import hosts, process as local_process, trees
from conftest import DRIVER_BANNER, TINY_HYPERPARAMETERS, make_dataset, train_job

# What a T4 host on SageMaker's default inference driver shows (driver 470: CUDA 11.4 at most).
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no usable NVIDIA GPU here)")


@pytest.fixture
def fake_driver(tmp_path):
    """A driver tree with driver 470 and one device node, as /proc and /dev show them on such a host."""
    root = tmp_path / "nvidia-root"
    (root / "proc" / "driver" / "nvidia").mkdir(parents=True)
    (root / "proc" / "driver" / "nvidia" / "version").write_text(DRIVER_BANNER)
    (root / "dev").mkdir()
    (root / "dev" / "nvidia0").write_text("")
    (root / "dev" / "nvidiactl").write_text("")  # not a GPU: not counted
    return root


def assert_names_driver_cuda_and_fix(message):
    assert "driver 470.82.01" in message and "1 device(s)" in message
    assert f"torch {torch.__version__}" in message
    if torch.version.cuda:  # the locked build: CUDA 12.x, driver >= 525
        assert f"a CUDA {torch.version.cuda} build, which needs NVIDIA driver 525 or newer" in message
    assert "Driver 470 runs CUDA 11.4 at most." in message
    assert cuda_check.GPU_INFERENCE_AMI in message and "IMAGE_CLASSIFIER_ALLOW_CPU=true" in message
    assert len(message) < 1024  # SageMaker shows the first 1,024 characters


def test_the_probe_reads_the_driver_and_the_devices(fake_driver):
    gpus = cuda_check.probe({cuda_check.PROBE_ROOT_ENV: str(fake_driver)})
    assert gpus.driver_version == "470.82.01" and gpus.driver_major == 470 and gpus.present
    assert gpus.devices == (str(fake_driver / "dev" / "nvidia0"),)
    assert cuda_check.newest_cuda(470) == "11.4" and cuda_check.newest_cuda(550) == "12.4"
    assert cuda_check.newest_cuda(580) == "13.0" and cuda_check.newest_cuda(440) is None


def test_a_cpu_only_host_is_unaffected(tmp_path):
    gpus = cuda_check.require_usable_gpu({cuda_check.PROBE_ROOT_ENV: str(tmp_path)})
    assert not gpus.present


def test_the_toolkit_gpu_count_alone_is_evidence(tmp_path):
    gpus = cuda_check.probe({cuda_check.PROBE_ROOT_ENV: str(tmp_path), "SM_NUM_GPUS": "4"})
    assert gpus.present and gpus.driver_version is None
    message = cuda_check.unusable_message(gpus, "2.10.0", "12.8")
    assert "driver version unknown, SM_NUM_GPUS=4" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use this host's GPU: nothing is unusable")
def test_gpus_torch_cannot_use_raise_with_driver_cuda_and_fix(fake_driver):
    env = {cuda_check.PROBE_ROOT_ENV: str(fake_driver)}
    with pytest.raises(cuda_check.GpuUnusableError) as raised:
        cuda_check.require_usable_gpu(env)
    assert_names_driver_cuda_and_fix(str(raised.value))
    # The deliberate opt-out.
    assert cuda_check.require_usable_gpu({**env, cuda_check.ALLOW_CPU_ENV: "true"}).present


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use this host's GPU: nothing is unusable")
def test_train_fails_at_once_with_the_message(tmp_path, fake_driver, monkeypatch):
    monkeypatch.setenv(cuda_check.PROBE_ROOT_ENV, str(fake_driver))
    job, exit_code = train_job(tmp_path, {"epochs": "1"})
    assert exit_code != 0 and not job.succeeded
    assert_names_driver_cuda_and_fix(job.failure_reason)
    assert not re.search(r"^epoch=", job.log_file.read_text(), re.MULTILINE)  # nothing was trained on the CPU
    assert not any((job.dir / "model").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use this host's GPU: nothing is unusable")
def test_serve_exits_non_zero_with_the_message(tmp_path, fake_driver):
    serve = Path(sys.executable).parent / "serve"
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(tmp_path), **{cuda_check.PROBE_ROOT_ENV: str(fake_driver)})
    result = subprocess.run([str(serve), "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("serve: NVIDIA GPUs are present")
    assert_names_driver_cuda_and_fix(message)


# ------------------------------------------------------------------- issue 31: the fix, and the workers' user
def host(driver):
    return cuda_check.HostGpus(driver, ("/dev/nvidia0",), 0)


@pytest.mark.parametrize("driver, cuda, words, not_words", [
    # SageMaker's default inference driver with the image's CUDA 12.8 build: either endpoint AMI runs it.
    ("470.82.01", "12.8", ["al2-ami-sagemaker-inference-gpu-2-1 (driver 535) or al2-ami-sagemaker-inference-gpu-3-1 "
                           "(driver 550)", "a training host's driver cannot be chosen"], ["it is not the driver"]),
    # A CUDA 13 build needs 580: no inference AMI here has it, so no AMI is recommended.
    ("550.90.07", "13.0", ["no SageMaker inference AMI has a driver that runs this build", "rebuild the image"],
     ["InferenceAmiVersion"]),
    # A driver new enough: the AMI would change nothing; the device files and the user are the suspects.
    ("535.183.01", "12.8", ["it is not the driver", "may open the device files", "/dev/nvidia0"],
     ["InferenceAmiVersion"]),
    (None, None, ["a CPU-only build", "rebuild the image with a CUDA build of torch"], ["InferenceAmiVersion"]),
])
def test_the_fix_depends_on_what_the_driver_needs(driver, cuda, words, not_words):
    message = cuda_check.unusable_message(host(driver), "2.10.0", cuda, "torch.cuda.is_available() is False")
    for word in words:
        assert word in message
    for word in not_words:
        assert word not in message
    assert len(message) < 1024


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use this host's GPU: nothing is unusable")
def test_a_serving_worker_that_cannot_use_the_gpu_fails_its_load(trained_model_dir, fake_driver, monkeypatch):
    """A worker whose user cannot use the GPU raises at load (MMS never calls it ready) instead of serving from
    the CPU; here torch sees no GPU while the fake driver tree says there is one."""
    from image_classifier.serving import handler

    monkeypatch.setenv(cuda_check.PROBE_ROOT_ENV, str(fake_driver))
    with pytest.raises(cuda_check.GpuUnusableError) as raised:
        handler.model_fn(str(trained_model_dir))
    message = str(raised.value)
    assert f"(model server worker, uid {os.getuid()}) (torch.cuda.is_available() is False)" in message
    assert_names_driver_cuda_and_fix(message)
    monkeypatch.setenv(cuda_check.ALLOW_CPU_ENV, "true")  # the deliberate opt-out still serves from the CPU
    assert handler.model_fn(str(trained_model_dir)).device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use this host's GPU: nothing is unusable")
def test_serve_checks_the_gpu_as_the_model_server_s_user_before_mms_starts(tmp_path, fake_driver):
    """Before multi-model-server starts (so /ping never answers), in a process of the server's user."""
    from image_classifier.serving import serve, settings

    server = serve.Server(tmp_path / "model", 1, settings.load({}, cores=2, memory_mib=8192), tmp_path)
    with pytest.raises(serve.ServeError) as raised:
        serve.check_gpu_for(server, {cuda_check.PROBE_ROOT_ENV: str(fake_driver), **os.environ})
    assert f"uid {os.getuid()}) (torch.cuda.is_available() is False)" in str(raised.value)
    assert_names_driver_cuda_and_fix(str(raised.value))
    serve.check_gpu_for(server, {cuda_check.PROBE_ROOT_ENV: str(tmp_path)})  # no GPU: nothing is run


# ---------------------------------------------------------------------------- on a GPU (bench/gpu_check.sh)
@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_amp_training_on_the_gpu(tmp_path):
    job, exit_code = train_job(tmp_path, {"epochs": "2", "amp": "true", "batch-size": "16"})
    assert exit_code == 0 and job.succeeded, job.log_file.read_text()[-3000:]
    log = job.log_file.read_text()
    assert "on cuda:0" in log and log.count("epoch=") == 2 and "test_acc=" in log


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_nccl_data_parallel_on_every_visible_gpu(tmp_path):
    gpus = torch.cuda.device_count()
    data = make_dataset(tmp_path / "data", {"train": 16, "valid": 6, "test": 6})
    hps = dict(TINY_HYPERPARAMETERS, epochs="2", amp="true", sagemaker_torch_distributed_enabled="true")
    jobs = hosts.prepare_hosts(tmp_path / "jobs", "nccl", {"train": data}, hps, 1)
    exit_code = local_process.train_hosts(jobs, echo=False)
    trees.finish(jobs[0])
    log = jobs[0].log_file.read_text()
    assert exit_code == 0 and jobs[0].succeeded, log[-3000:]
    assert f"1 host(s) x {gpus} process(es) under torchrun" in log and log.count("epoch=2 ") == 1
    assert sorted(p.name for p in (jobs[0].dir / "model").iterdir()) == ["model.json", "model.pth"]


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_serving_on_the_gpu(trained_model_dir):
    from image_classifier.serving import handler
    from serving_samples import png

    model = handler.model_fn(str(trained_model_dir))
    assert model.device.type == "cuda" and next(model.network.parameters()).is_cuda
    prediction = handler.predict_fn(handler.input_fn(png(), "image/png"), model)
    body, _ = handler.output_fn(prediction, "application/json")
    answer = json.loads(body)
    assert answer["predictions"][0][0]["label"] in ("Red fox", "Green frog", "Blue whale")


@pytest.mark.gpu
@needs_cuda
def test_a_process_that_cannot_use_the_real_gpu_fails_with_the_reason(tmp_path):
    """On a GPU host: the check as run for the model server's user passes; hide the GPUs from a process (as a
    missing device permission does) and it fails with the reason while the driver and devices are there."""
    check = [sys.executable, "-m", "image_classifier.cuda_check"]
    assert subprocess.run(check, capture_output=True, text=True, timeout=300).returncode == 0
    hidden = subprocess.run(check, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert hidden.returncode == 1, hidden.stderr
    assert "NVIDIA GPUs are present" in hidden.stderr and "torch cannot use them (user " in hidden.stderr
