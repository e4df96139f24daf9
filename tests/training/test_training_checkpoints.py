"""Checkpoints per training job: jobs that share one checkpoint location (a tuning job's trials get one
CheckpointConfig.S3Uri) each keep theirs in a sub-folder named by TRAINING_JOB_NAME, as SageMaker's jobs
would; a restarted job keeps its name and resumes; a job without a name uses the folder itself."""
import pytest

from image_classifier import constants
from conftest import make_dataset, train_job

FAST = {"epochs": "1", "debug-hook": "false", "rules": "false"}


@pytest.fixture
def shared(tmp_path, monkeypatch):
    """One checkpoint folder for every job of the test (SageMaker's /opt/ml/checkpoints, synced to one URI)."""
    folder = tmp_path / "shared-checkpoints"
    monkeypatch.setenv("SM_CHECKPOINT_DIR", str(folder))
    return folder


def named_job(tmp_path, monkeypatch, name, data, **hps):
    monkeypatch.setenv("TRAINING_JOB_NAME", name)
    job, exit_code = train_job(tmp_path / name, dict(FAST, **hps), {"train": data}, name=name)
    return job, exit_code


@pytest.mark.slow  # four tiny real jobs
def test_two_jobs_with_different_hyperparameters_share_one_checkpoint_folder(tmp_path, monkeypatch, shared):
    data = make_dataset(tmp_path / "data")
    first, code = named_job(tmp_path, monkeypatch, "trial-1", data, lr="0.01")
    assert code == 0 and first.succeeded, first.log_file.read_text()[-3000:]
    second, code = named_job(tmp_path, monkeypatch, "trial-2", data, lr="0.02")
    assert code == 0 and second.succeeded, second.log_file.read_text()[-3000:]
    assert sorted(p.name for p in shared.iterdir()) == ["trial-1", "trial-2"]
    for name in ("trial-1", "trial-2"):
        assert (shared / name / constants.CHECKPOINT_FILE).is_file()

    # A restart keeps its name (spot): it resumes from its own checkpoint, not the other's.
    again, code = named_job(tmp_path / "again", monkeypatch, "trial-2", data, lr="0.02", epochs="2")
    assert code == 0 and again.succeeded, again.log_file.read_text()[-3000:]
    assert f"Resuming from {shared / 'trial-2' / constants.CHECKPOINT_FILE}" in again.log_file.read_text()

    # The same name with other hyperparameters is still another job's checkpoint: refused, not overwritten.
    other, code = named_job(tmp_path / "other", monkeypatch, "trial-1", data, lr="0.05")
    assert code != 0 and "belongs to another job (lr: 0.01 -> 0.05 differ)" in other.failure_reason


def test_a_job_name_that_cannot_be_a_folder_fails_naming_it(tmp_path, monkeypatch, shared):
    monkeypatch.setenv("TRAINING_JOB_NAME", "../escape")
    job, code = train_job(tmp_path, FAST)
    assert code != 0 and job.failure_reason.startswith('TRAINING_JOB_NAME "../escape" cannot name a checkpoint folder')
    assert not (tmp_path / "escape").exists()
