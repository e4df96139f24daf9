"""Checkpoints (training/checkpoints.py) without a training run: what a checkpoint holds and restores, a
damaged one set aside for the previous one, another job's refused, and a resumed non-first rank starting
its sums at zero."""
import logging
import random
import re
import types

import numpy as np
import pytest
import torch

from image_classifier import constants
from image_classifier.training import checkpoints
from image_classifier.training.distributed import Distributed
from image_classifier.training.hyperparameters import Hyperparameters
from image_classifier.training.layout import DataError
from image_classifier.training.loop import new_progress

FOLDERS = {"train": "/opt/ml/input/data/train"}


class Recorder:
    def position(self):
        return {"step": 7, "mode_steps": {"TRAIN": 7}}


def make_job(folder, rank=0, seed=0, hp=None):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    progress = {**new_progress(), "step": 3, "loss": 1.5, "correct": 4, "images": 8, "bad": 1, "seconds": 2.0}
    return types.SimpleNamespace(
        model=model, optimizer=optimizer, scheduler=scheduler, scaler=None, recorder=Recorder(),
        dist=Distributed(rank, 1, torch.device("cpu")), hp=hp or Hyperparameters.from_strings({"epochs": "3"}),
        splits=types.SimpleNamespace(folders=dict(FOLDERS)), state={"epoch": 1, "progress": progress},
        global_step=11, steps_per_epoch=5, checkpoint_dir=folder, checkpoint_path=folder / constants.CHECKPOINT_FILE)


def one_step(job):
    job.optimizer.zero_grad()
    job.model(torch.ones(4, 3)).sum().backward()
    job.optimizer.step()
    job.scheduler.step()


def test_a_saved_job_resumes_where_it_was(tmp_path):
    saved_job = make_job(tmp_path)
    one_step(saved_job)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    checkpoints.save_checkpoint(saved_job)
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    resumed = make_job(tmp_path, seed=1)
    resumed.state = {"epoch": 0, "progress": new_progress()}
    assert checkpoints.resume(resumed) == Recorder().position()
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws  # every generator
    for mine, theirs in zip(resumed.model.parameters(), saved_job.model.parameters()):
        assert torch.equal(mine, theirs)
    assert resumed.optimizer.state_dict()["state"][0]["momentum_buffer"].abs().sum() > 0
    assert torch.equal(resumed.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       saved_job.optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert resumed.scheduler.get_last_lr() == saved_job.scheduler.get_last_lr() == [0.05]
    assert resumed.state == saved_job.state
    one_step(saved_job), one_step(resumed)  # and they go on alike
    assert torch.equal(resumed.model.weight, saved_job.model.weight)


def test_a_fresh_job_finds_nothing_to_resume(tmp_path):
    assert checkpoints.resume(make_job(tmp_path)) is None
    assert checkpoints.load_checkpoint(tmp_path) == (None, None)


def test_a_non_first_rank_resumes_with_zero_sums(tmp_path):
    checkpoints.save_checkpoint(make_job(tmp_path))
    other = make_job(tmp_path)
    other.dist = types.SimpleNamespace(is_master=False, from_master=lambda load: load())
    checkpoints.resume(other)
    progress = other.state["progress"]
    assert (progress["loss"], progress["correct"], progress["images"], progress["bad"], progress["seconds"]) == \
        (0.0, 0, 0, 0, 0.0)
    assert type(progress["loss"]) is float and type(progress["correct"]) is int
    assert progress["step"] == 3  # the position is every rank's


@pytest.mark.parametrize("damage", [b"", b"not a pickle", "other-dict"])
def test_a_checkpoint_that_does_not_load_is_set_aside_for_the_previous_one(tmp_path, damage, caplog):
    job = make_job(tmp_path)
    checkpoints.save_checkpoint(job)
    job.global_step = 12
    checkpoints.save_checkpoint(job)  # the first becomes the previous one
    newest = tmp_path / constants.CHECKPOINT_FILE
    if damage == "other-dict":
        torch.save({"model": {}}, newest)
    else:
        newest.write_bytes(damage)
    saved, path = checkpoints.load_checkpoint(tmp_path)
    assert path == tmp_path / constants.PREVIOUS_CHECKPOINT_FILE and saved["step"] == 11
    aside = list(tmp_path.glob(f"{constants.CHECKPOINT_FILE}.unreadable-*"))
    assert len(aside) == 1 and not newest.exists()
    # named by when it was set aside, so that names sort by time: ...unreadable-YYYYmmdd-HHMMSS
    assert re.fullmatch(rf"{re.escape(constants.CHECKPOINT_FILE)}\.unreadable-20\d{{6}}-\d{{6}}", aside[0].name)
    warning, = caplog.messages
    assert warning.startswith(f"The checkpoint {newest} does not load (")
    assert warning.endswith(f"); set aside as {aside[0].name}.")
    if damage == "other-dict":
        assert '("ValueError: not a checkpoint of this job (keys missing)")' in warning


def test_the_reason_a_checkpoint_does_not_load_is_cut_at_300_characters(tmp_path, monkeypatch, caplog):
    checkpoints.save_checkpoint(make_job(tmp_path))

    def fails(path):
        raise OSError("x" * 1000)

    monkeypatch.setattr(checkpoints, "load_weights", fails)
    assert checkpoints.load_checkpoint(tmp_path) == (None, None)
    reason = "OSError: " + "x" * (300 - len("OSError: "))
    assert f'does not load ("{reason}"); set aside' in caplog.messages[0]


def test_a_crash_between_the_two_renames_resumes_from_the_previous_checkpoint(tmp_path):
    """atomic_write moves the newest checkpoint to the previous one's name, then the new file to the newest's:
    a crash between the two leaves only the previous one, which is loaded."""
    job = make_job(tmp_path)
    checkpoints.save_checkpoint(job)
    job.global_step = 12
    checkpoints.save_checkpoint(job)
    (tmp_path / constants.CHECKPOINT_FILE).unlink()
    saved, path = checkpoints.load_checkpoint(tmp_path)
    assert (saved["step"], path) == (11, tmp_path / constants.PREVIOUS_CHECKPOINT_FILE)


def test_a_checkpoint_without_the_optional_entries_resumes(tmp_path):
    """Only CHECKPOINT_KEYS are required: one without a scaler or the debugger's position still resumes."""
    checkpoints.save_checkpoint(make_job(tmp_path))
    path = tmp_path / constants.CHECKPOINT_FILE
    saved = torch.load(path, weights_only=True)
    torch.save({key: saved[key] for key in checkpoints.CHECKPOINT_KEYS}, path)
    assert checkpoints.resume(make_job(tmp_path, seed=1)) is None
    assert set(checkpoints.load_checkpoint(tmp_path)[0]) == checkpoints.CHECKPOINT_KEYS


def test_the_checkpoint_folder_is_made_with_its_parents(tmp_path):
    job = make_job(tmp_path / "job" / "checkpoints")
    checkpoints.save_checkpoint(job)
    assert checkpoints.load_checkpoint(tmp_path / "job" / "checkpoints")[0]["step"] == 11


def test_the_newest_checkpoint_wins(tmp_path):
    job = make_job(tmp_path)
    checkpoints.save_checkpoint(job)
    job.global_step = 12
    checkpoints.save_checkpoint(job)
    saved, path = checkpoints.load_checkpoint(tmp_path)
    assert (saved["step"], path) == (12, tmp_path / constants.CHECKPOINT_FILE)
    assert set(saved) >= checkpoints.CHECKPOINT_KEYS and saved["debugger"] == Recorder().position()


def test_another_jobs_checkpoint_is_refused_but_safe_changes_resume(tmp_path):
    checkpoints.save_checkpoint(make_job(tmp_path))
    other = make_job(tmp_path, hp=Hyperparameters.from_strings({"epochs": "3", "lr": "0.5"}))
    with pytest.raises(DataError, match=r"belongs to another job \(lr: .* -> 0.5 differ\)"):
        checkpoints.resume(other)
    moved = make_job(tmp_path)
    moved.splits.folders = {"train": "/elsewhere"}
    with pytest.raises(DataError, match=r"\(the classes differ\)"):
        checkpoints.resume(moved)
    safe = make_job(tmp_path, hp=Hyperparameters.from_strings({"epochs": "9", "workers": "2",
                                                               "early-stopping-patience": "2"}))
    assert checkpoints.resume(safe) == Recorder().position()


def test_the_refusal_names_the_checkpoint_and_every_change(tmp_path):
    saved = Hyperparameters.from_strings({"epochs": "3"}).to_strings()
    checkpoints.save_checkpoint(make_job(tmp_path))
    other = make_job(tmp_path, hp=Hyperparameters.from_strings({"epochs": "3", "lr": "0.5", "batch-size": "16"}))
    with pytest.raises(DataError) as refused:
        checkpoints.resume(other)
    changes = f"batch-size: {saved['batch-size']} -> 16, lr: {saved['lr']} -> 0.5"
    assert str(refused.value) == (
        f"The checkpoint {tmp_path / constants.CHECKPOINT_FILE} belongs to another job ({changes} differ). Use a "
        "new checkpoint location, or delete it to start over.")


def test_the_loss_scale_resumes_where_the_host_scales_the_loss(tmp_path):
    """float16 AMP's GradScaler state goes into the checkpoint and comes back; a host without one (no AMP: None,
    bfloat16 AMP: False) resumes from it, and a host with one resumes from a checkpoint without."""
    saved_job = make_job(tmp_path)
    saved_job.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    checkpoints.save_checkpoint(saved_job)
    resumed = make_job(tmp_path)
    resumed.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    checkpoints.resume(resumed)
    assert resumed.scaler.get_scale() == 1024.0
    for no_scaler in (None, False):
        without = make_job(tmp_path)
        without.scaler = no_scaler
        assert checkpoints.resume(without) == Recorder().position()
    checkpoints.save_checkpoint(make_job(tmp_path))  # scaler None
    fresh = make_job(tmp_path)
    fresh.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    checkpoints.resume(fresh)
    assert fresh.scaler.get_scale() == 8.0


def test_only_the_first_rank_writes(tmp_path):
    job = make_job(tmp_path)
    job.dist = types.SimpleNamespace(is_master=False, sum=lambda *v: v, max=lambda v: v, barrier=lambda: None)
    checkpoints.save_checkpoint(job)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_the_rng_states_load_without_pickled_code(tmp_path):
    path = tmp_path / "rng.pt"
    checkpoints.atomic_save({"rng": checkpoints.rng_states()}, path)
    states = torch.load(path, weights_only=True)["rng"]
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpoints.restore_rng_states(states)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


class FakeCuda:
    """torch.cuda's generator calls on a host with (or without) a GPU."""

    def __init__(self, monkeypatch, available):
        self.state, self.restored = [torch.tensor([1, 2, 3], dtype=torch.uint8)], []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: self.state)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.restored.append)


def test_the_gpu_generators_are_saved_and_restored_where_there_is_a_gpu(tmp_path, monkeypatch):
    gpu = FakeCuda(monkeypatch, available=True)
    path = tmp_path / "rng.pt"
    checkpoints.atomic_save({"rng": checkpoints.rng_states()}, path)
    states = torch.load(path, weights_only=True)["rng"]
    checkpoints.restore_rng_states(states)
    assert len(gpu.restored) == 1 and torch.equal(gpu.restored[0][0], gpu.state[0])
    # a checkpoint from a host without a GPU resumes on one (its GPU generators keep their seed) ...
    checkpoints.restore_rng_states({key: value for key, value in states.items() if key != "cuda"})
    assert len(gpu.restored) == 1
    # ... and one from a GPU host on a host without
    cpu = FakeCuda(monkeypatch, available=False)
    assert "cuda" not in checkpoints.rng_states()
    checkpoints.restore_rng_states(states)
    assert cpu.restored == []


def test_the_checkpoint_holds_the_epochs_sums_over_every_rank(tmp_path):
    """Two ranks with the same sums: the checkpoint keeps their total (rank 0 resumes with it), and the
    slowest rank's seconds."""
    job = make_job(tmp_path)
    job.dist = types.SimpleNamespace(is_master=True, sum=lambda *values: tuple(2 * v for v in values),
                                     max=lambda value: value + 1, barrier=lambda: None)
    checkpoints.save_checkpoint(job)
    progress = checkpoints.load_checkpoint(tmp_path)[0]["state"]["progress"]
    assert (progress["loss"], progress["correct"], progress["images"], progress["bad"], progress["seconds"]) == \
        (3.0, 8, 16, 2, 3.0)
    assert job.state["progress"]["images"] == 8  # the running job's own sums are left as they are


def test_resuming_says_from_where(tmp_path, caplog):
    checkpoints.save_checkpoint(make_job(tmp_path))
    caplog.set_level(logging.INFO, logger="image_classifier")
    checkpoints.resume(make_job(tmp_path))
    assert f"Resuming from {tmp_path / constants.CHECKPOINT_FILE} at global step 11 (epoch 2, step 3 of 5)" \
        in caplog.messages  # the whole line
