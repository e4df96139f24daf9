"""The input pipeline and the rate a user pays for on a GPU: loader workers from the vCPUs per GPU (checked
anywhere), and, marked `gpu`, a real job on CUDA with the decode cache: bf16/fp16 AMP, channels_last, GPU
utilisation and peak memory in the epoch line, and the GPU profiler rules judging (bench/gpu_check.sh)."""
import json

import pytest
import torch

from conftest import train_job
from image_classifier import constants
from image_classifier.training.environment import TrainingEnvironment
from image_classifier.metrics import parse_metrics
from image_classifier.training.job import default_workers

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no usable NVIDIA GPU here)")


@pytest.mark.parametrize("vcpus, gpus, expected", [(4, 1, 3), (8, 1, 7), (96, 8, 11), (192, 8, 16), (1, 1, 1)])
def test_loader_workers_come_from_the_vcpus_per_gpu(monkeypatch, vcpus, gpus, expected):
    """ml.g5.xlarge: 4 vCPUs, 1 GPU -> 3 workers beside the training process; ml.p4d.24xlarge: 96 vCPUs,
    8 GPUs (8 processes under torchrun) -> 11 each."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(gpus))
    env = TrainingEnvironment.__new__(TrainingEnvironment)
    object.__setattr__(env, "num_cpus", vcpus)
    assert default_workers(env, torch.device("cuda")) == expected
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers(env, torch.device("cpu")) == min(vcpus, 8)


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_a_gpu_job_with_the_cache_reports_what_the_user_pays_for(tmp_path):
    job, exit_code = train_job(tmp_path, {"epochs": "2", "batch-size": "16", "image-size": "64",
                                          "decode-cache": "on", "workers": "-1"})
    log = job.log_file.read_text()
    assert exit_code == 0, log[-3000:]
    dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert f"GPU: channels_last, AMP {dtype}" in log and "Decode cache on" in log
    metrics = parse_metrics(log.splitlines())
    assert len(metrics["gpu_peak_memory_mb"]) == 2 and all(m > 0 for m in metrics["gpu_peak_memory_mb"])
    assert len(metrics["gpu_utilization"]) == 2 and all(-1 <= u <= 100 for u in metrics["gpu_utilization"])
    rules = json.loads((job.dir / "output" / "data" / constants.RULES_FILE).read_text())["profiler_rules"]
    statuses = {r["rule"]: r["status"] for r in rules}
    # on a GPU the GPU rules judge (or say they lack samples); none says "not applicable on CPU"
    assert all(r["finding"] != "not applicable on CPU: the job ran without a GPU" for r in rules)
    assert statuses["LoadBalancing"] in ("not applicable", "passed", "triggered", "no data")
    if torch.cuda.device_count() == 1 and statuses["LoadBalancing"] != "no data":
        assert statuses["LoadBalancing"] == "not applicable"
