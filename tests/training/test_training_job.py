"""The real training job: the toolkit's `train` as a subprocess over an /opt/ml tree, and launch.py.
(Stop and resume, and the job under faults: test_training_faults.py.)"""
import json
import re
import subprocess
import sys
import tarfile

import pytest

from image_classifier.constants import GIVE_WAY_ENV
from image_classifier.metrics import GPU_EPOCH_METRICS, METRIC_DEFINITIONS, PROFILER_RULE_METRICS, parse_metrics
from conftest import PROJECT_DIR, TINY_HYPERPARAMETERS, make_dataset, train_job

pytestmark = pytest.mark.slow


def _log_lines(job):
    return job.log_file.read_text().splitlines()


def test_successful_job_writes_the_artifact_and_metric_lines(tmp_path, monkeypatch):
    monkeypatch.setenv(GIVE_WAY_ENV, "1")  # as `launch.py train --local` runs it: the job prints cpu_taken_elsewhere
    job, exit_code = train_job(tmp_path, {"epochs": "2"})
    assert exit_code == 0 and job.succeeded and job.failure_reason is None
    model_dir = job.dir / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.pth"]
    metadata = json.loads((model_dir / "model.json").read_text())
    assert metadata["classes"] == ["Red fox", "Green frog", "Blue whale"]
    assert metadata["arch"] == "resnet18" and metadata["image_size"] == 16
    assert metadata["hyperparameters"]["lr"] == "0.01"
    with tarfile.open(job.model_tar) as tar:
        assert sorted(tar.getnames()) == ["model.json", "model.pth"]
    # SageMaker's regexes (the launcher's metric_definitions) read the real log lines.
    metrics = parse_metrics(_log_lines(job))
    assert metrics["epoch"] == [1.0, 2.0]
    for name in ("train_loss", "train_acc", "valid_loss", "valid_acc", "images_per_sec", "bad_images"):
        assert len(metrics[name]) == 2, name
    assert all(0 <= a <= 1 for a in metrics["valid_acc"]) and all(v > 0 for v in metrics["images_per_sec"])
    assert metrics["test_acc"] == [pytest.approx(metadata["metrics"]["test_acc"], abs=1e-4)]
    assert metrics["test_loss"] == [pytest.approx(metadata["metrics"]["test_loss"], abs=1e-4)]
    # Every metric SageMaker is told about is printed (the GPU's own only on a GPU; the int8 model's accuracies only
    # where one was made: this set is too small to calibrate, tests/serving/test_int8.py makes one).
    assert {d["Name"] for d in METRIC_DEFINITIONS} - set(GPU_EPOCH_METRICS) - {"fp32_valid_acc", "int8_valid_acc"} \
        == set(metrics)
    assert metrics["int8_kept"] == [-1] and metadata["quantization"]["decision"] == "skipped"
    assert all(0 <= share < 1 for share in metrics["data_wait_share"])
    assert all(0 < wall <= compute for wall, compute in zip(metrics["wall_images_per_sec"], metrics["images_per_sec"]))
    # On CPU the GPU rules say "not applicable" (-2), never "passed".
    gpu_rules = {"rule_cpu_bottleneck", "rule_io_bottleneck", "rule_low_gpu_utilization", "rule_gpu_memory_increase",
                 "rule_batch_size", "rule_load_balancing"}
    assert {name: metrics[name] for name in gpu_rules} == {name: [-2.0] for name in gpu_rules}
    assert metrics["rule_max_initialization_time"] == [0.0] and set(PROFILER_RULE_METRICS) <= set(metrics)
    predictions = json.loads((job.dir / "output" / "data" / "test_predictions.json").read_text())
    assert len(predictions["predicted"]) == len(predictions["actual"]) == 18


def test_bad_hyperparameter_writes_the_failure_file(tmp_path):
    job, exit_code = train_job(tmp_path, {"batch-size": "0"})
    assert exit_code != 0 and not job.succeeded
    assert job.failure_reason == ("Hyperparameter 'batch-size' = '0' is out of range: "
                                  "expected an integer from 1 to 4096.")
    assert not (job.dir / "model" / "model.pth").exists()


def test_pretrained_without_weights_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    job, exit_code = train_job(tmp_path, {"pretrained": "true"})
    assert exit_code != 0
    assert job.failure_reason.startswith("pretrained=true needs the ImageNet weights of resnet18")


def test_separate_channels_and_unreadable_pictures(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "train" / "001.Red_fox" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    channels = {split: root / split for split in ("train", "valid", "test")}
    job, exit_code = train_job(tmp_path, {"epochs": "1"}, channels, name="skip")
    assert exit_code == 0
    assert parse_metrics(_log_lines(job))["bad_images"] == [1.0]
    assert "Skipping 1 unreadable picture(s) in 'train'" in job.log_file.read_text()
    job, exit_code = train_job(tmp_path, {"epochs": "1", "on-bad-image": "fail"}, channels, name="fail")
    assert exit_code != 0 and "broken.jpg" in job.failure_reason and "on-bad-image=fail" in job.failure_reason


def test_launch_py_trains_a_dogimages_style_folder(tmp_path):
    data = make_dataset(tmp_path / "dogImages", {"train": 4, "valid": 2, "test": 2})
    (data / "LICENSE.txt").write_text("stray file at the top")
    (data / "train" / "002.Green_frog" / "Thumbs.db").write_bytes(b"\0\1")
    result = subprocess.run(
        [sys.executable, "launch.py", "train", "--local", "process", "--data", str(data), "--job-name", "cli",
         "--jobs-dir", str(tmp_path / "jobs")] + [f"--hp={k}={v}" for k, v in TINY_HYPERPARAMETERS.items()]
        + ["--hp", "epochs=1"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Training job cli completed in " in result.stdout and "test accuracy " in result.stdout
    assert (tmp_path / "jobs" / "cli" / "model.tar.gz").is_file()
    assert (tmp_path / "jobs" / "cli" / "train.log").read_text().count("epoch=1 ") == 1


def test_launch_py_reports_a_failed_job_in_one_line(tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 2, "valid": 2})
    result = subprocess.run(
        [sys.executable, "launch.py", "train", "--local", "process", "--data", str(data), "--job-name", "bad",
         "--jobs-dir", str(tmp_path / "jobs"), "--hp", "lr=abc"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: --hp: Hyperparameter 'lr' = 'abc' is not "
                        r"valid: expected a number from 1e-07 to 10\.0\.", last_line), last_line
    assert not (tmp_path / "jobs").exists()  # refused before the job started
