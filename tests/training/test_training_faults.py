"""The training job under faults: a stop inside an epoch and a restart, a damaged checkpoint, malformed
platform configuration, out of memory, hostile file systems, hostile class names and pickles.

Every job here is the real one (the toolkit's `train` as a subprocess over an /opt/ml tree), on tiny data."""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_HYPERPARAMETERS, make_dataset
from image_classifier import constants
from image_classifier.metrics import METRIC_DEFINITIONS, parse_metrics
from launcher import LauncherError
from launcher.local import process as local_process, processes, trees
from training_state import assert_same_training_state, load_checkpoint

pytestmark = pytest.mark.slow

TRAIN = str(Path(sys.executable).parent / "train")
# 8 pictures per class and batch 8: 3 steps per epoch, 9 in all; the stop lands inside epoch 2.
PER_SPLIT = {"train": 8, "valid": 2, "test": 2}
RUN_HPS = {"epochs": "3", "profile": "true", "profile-start-step": "1", "profile-steps": "2",
           "debug-tensor-interval": "2"}
STOP_AT = 5  # global step: epoch 2, step 2 of 3


JOB_TIMEOUT = 600  # seconds: a job that hangs (on a FIFO, say) fails its test instead of stalling CI


def run_train(job, env=None, preexec_fn=None, command=(TRAIN,)):
    """Run the job's process group to its end (killed after JOB_TIMEOUT); returns the exit status."""
    environment = dict(local_process.process_environment(job), **(env or {}))
    with open(job.log_file, "ab") as out:
        process = subprocess.Popen(list(command), env=environment, stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=preexec_fn, start_new_session=True)
        try:
            exit_code = process.wait(timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            processes.signal_tree(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"the job did not end within {JOB_TIMEOUT} s: {log_of(job)[-2000:]}")
    processes.wait_tree(process.pid, timeout=JOB_TIMEOUT)  # the toolkit may end before the script
    return exit_code


def run_job(jobs_dir, name, channels, hyperparameters, env=None):
    """The real job; `env`: extra environment variables. Returns (LocalJob, exit code)."""
    job = trees.prepare_job(jobs_dir, name, channels, dict(TINY_HYPERPARAMETERS, **hyperparameters))
    exit_code = run_train(job, env)
    trees.finish(job)
    return job, exit_code


def log_of(job):
    return job.log_file.read_text(errors="replace")


def checkpoint(job, name=constants.CHECKPOINT_FILE):
    return load_checkpoint(job.dir / "checkpoints" / name)


def train_losses(job):
    """{step: loss} of the training steps the smdebug hook saved."""
    from smdebug.core.modes import ModeKeys
    from smdebug.trials import create_trial

    trial = create_trial(str(job.dir / "output" / "tensors"))
    name = next(n for n in trial.tensor_names(collection="losses") if "CrossEntropyLoss_output" in n)
    return {step: float(value) for step, value in trial.tensor(name).values(mode=ModeKeys.TRAIN).items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("faults") / "data", PER_SPLIT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted run (one data-loading process: the resumed runs below use two)."""
    job, exit_code = run_job(tmp_path_factory.mktemp("reference"), "reference", {"train": data},
                             dict(RUN_HPS, workers="0"))
    assert exit_code == 0, log_of(job)[-3000:]
    return job


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, data):
    """A run with two data-loading workers that SIGTERMs itself after global step STOP_AT."""
    job, exit_code = run_job(tmp_path_factory.mktemp("stopped"), "stopped", {"train": data},
                             dict(RUN_HPS, workers="2"), env={constants.STOP_AT_STEP_ENV: str(STOP_AT)})
    assert exit_code != 0, log_of(job)[-3000:]
    saved = tmp_path_factory.mktemp("stopped-checkpoints") / "checkpoints"
    shutil.copytree(job.dir / "checkpoints", saved)  # for the damaged-checkpoint test
    return job, saved


# ------------------------------------------------------------------------------- 1. stop and resume
def test_stop_inside_an_epoch_then_resume_ends_bit_for_bit_like_an_uninterrupted_run(reference, stopped, data):
    job, _ = stopped
    log = log_of(job)
    assert f"{constants.STOP_AT_STEP_ENV}={STOP_AT}: sending SIGTERM" in log and "SIGTERM received" in log
    assert f"Stopped by SIGTERM in epoch 2 at step 2 (global step {STOP_AT})" in log, log[-3000:]
    assert "checkpoint is saved" in job.failure_reason and not job.succeeded
    assert checkpoint(job)["step"] == STOP_AT
    # Every exit closes the profiler and the recorder: system metrics and the tensors' end mark exist.
    assert json.loads((job.dir / "output" / "data" / constants.SYSTEM_METRICS_FILE).read_text())["summary"]["steps"] == STOP_AT
    assert (job.dir / "output" / "tensors" / "training_job_end.ts").is_file()

    resumed, exit_code = run_job(job.dir.parent, "stopped", {"train": data}, dict(RUN_HPS, workers="2"))
    log = log_of(resumed)
    assert exit_code == 0 and resumed.succeeded, log[-3000:]
    assert re.search(rf"Resuming from \S+/checkpoint\.pth at global step {STOP_AT} \(epoch 2, step 2 of 3\)", log)
    assert_same_training_state(checkpoint(resumed), checkpoint(reference))
    assert checkpoint(resumed)["step"] == 9
    # The rules see the whole run: the saved losses of all 9 steps, the same values, the same verdicts.
    assert train_losses(resumed) == train_losses(reference) and sorted(train_losses(reference)) == list(range(9))
    rules = [json.loads((j.dir / "output" / "data" / constants.RULES_FILE).read_text())["rules"]
             for j in (resumed, reference)]
    assert [(r["rule"], r["status"]) for r in rules[0]] == [(r["rule"], r["status"]) for r in rules[1]]


# --------------------------------------------------------------------------- 2. durable checkpoints
def test_a_truncated_checkpoint_is_set_aside_and_the_previous_one_resumes(reference, stopped, data, tmp_path):
    _, saved = stopped
    assert checkpoint_steps(saved) == {constants.CHECKPOINT_FILE: STOP_AT, constants.PREVIOUS_CHECKPOINT_FILE: 3}
    job = trees.prepare_job(tmp_path / "jobs", "damaged", {"train": data},
                                     dict(TINY_HYPERPARAMETERS, **RUN_HPS, workers="2"))
    shutil.rmtree(job.dir / "checkpoints")
    shutil.copytree(saved, job.dir / "checkpoints")
    newest = job.dir / "checkpoints" / constants.CHECKPOINT_FILE
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a write cut short

    job, exit_code = run_job(tmp_path / "jobs", "damaged", {"train": data}, dict(RUN_HPS, workers="2"))
    log = log_of(job)
    assert exit_code == 0 and job.succeeded, log[-3000:]
    assert re.search(r"WARNING The checkpoint \S+/checkpoint\.pth does not load \(.+\); set aside as "
                     r"checkpoint\.pth\.unreadable-\d{8}-\d{6}\.", log), log[-3000:]
    assert len(list((job.dir / "checkpoints").glob("checkpoint.pth.unreadable-*"))) == 1
    assert re.search(r"Resuming from \S+/checkpoint\.previous\.pth at global step 3 \(epoch 2, step 0 of 3\)", log)
    assert_same_training_state(checkpoint(job), checkpoint(reference))


def checkpoint_steps(folder):
    return {p.name: load_checkpoint(p)["step"] for p in sorted(folder.glob("checkpoint*.pth"))}


# ------------------------------------------------------------------- 3. a failure file for every failure
def prepared(tmp_path, channels=None, hyperparameters=None):
    channels = channels or {"train": make_dataset(tmp_path / "data", {"train": 2, "valid": 2})}
    return trees.prepare_job(tmp_path / "jobs", "job", channels,
                                      dict(TINY_HYPERPARAMETERS, **(hyperparameters or {})))


# The training script run directly, without the toolkit (which sets SM_HOSTS and reads the config files
# itself before it starts the script): what the script does with what it is given.
SCRIPT = [sys.executable, "-m", "image_classifier.training.job"]


@pytest.mark.parametrize("fault, expected", [
    ({"SM_HOSTS": '["algo-1"'}, r"^SM_HOSTS is not valid JSON"),
    ({"SM_HOSTS": '["algo-2"]'}, r"^SM_HOSTS: the current host 'algo-1' is not one of the hosts \['algo-2'\]$"),
    ({"SM_NUM_GPUS": "two"}, r"^SM_NUM_GPUS must be an integer >= 0, got 'two'$"),
    ("resourceconfig.json", r"^Cannot read \S+/resourceconfig\.json: "),
    ("hyperparameters.json", r"^\S+/hyperparameters\.json must hold a JSON object of hyperparameters$"),
    ("channel is a file", r"^The 'train' data \"\S+/input/data/train\" is not a folder that can be read\.$"),
], ids=["SM_HOSTS not JSON", "current host not in SM_HOSTS", "SM_NUM_GPUS", "resourceconfig.json",
        "hyperparameters.json", "channel is a file"])
def test_a_bad_environment_or_channel_writes_the_failure_file(tmp_path, fault, expected):
    job = prepared(tmp_path)
    env = fault if isinstance(fault, dict) else {}
    config = job.dir / "input" / "config"
    if fault == "resourceconfig.json":
        (config / "resourceconfig.json").write_text('{"current_host": "algo-1", "hosts": ["algo-1"')
    elif fault == "hyperparameters.json":
        (config / "hyperparameters.json").write_text('["lr", "0.1"]')
    elif fault == "channel is a file":
        channel = job.dir / "input" / "data" / "train"
        channel.unlink()
        channel.write_text("not a folder")
    assert run_train(job, env, command=SCRIPT) == 2, log_of(job)[-3000:]
    assert re.search(expected, job.failure_reason), job.failure_reason


def test_out_of_memory_writes_a_failure_file_that_says_so(tmp_path):
    """A real allocation failure: the job's address space is capped at 6 GB (torch alone maps ~3.5 GB), and
    a training step on 12 pictures of 1024 px needs several GB more for the activations alone."""
    data = make_dataset(tmp_path / "data", {"train": 4, "valid": 2})
    job = prepared(tmp_path, {"train": data}, {"image-size": "1024", "batch-size": "12", "epochs": "1"})
    limit = 6 * 2**30
    exit_code = run_train(job, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert exit_code != 0, log_of(job)[-3000:]
    assert job.failure_reason.startswith("Out of memory (") and "Lower batch-size, image-size or workers" in \
        job.failure_reason, job.failure_reason


def test_the_failure_reason_fits_sagemakers_1_kb_in_bytes(tmp_path):
    job = prepared(tmp_path, {"train": make_dataset(tmp_path / "d", {"train": 2, "valid": 2})})
    hyperparameters = json.loads((job.dir / "input" / "config" / "hyperparameters.json").read_text())
    # a 2-byte character: 700 characters, 1,400 bytes (in a value: an unknown key's non-ASCII is quoted as \u00e9)
    hyperparameters["optimizer"] = "\u00e9" * 700
    (job.dir / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    assert run_train(job) != 0  # the toolkit's own exit status is 1 for any failure of the script
    reason = (job.dir / "output" / "failure").read_bytes()
    assert 1000 < len(reason) <= 1024  # SageMaker's limit, in bytes
    assert reason.decode("utf-8").startswith("Hyperparameter 'optimizer' = '\u00e9\u00e9")


# --------------------------------------------------------------------- 4. class names are data, not log syntax
HOSTILE_CLASSES = (
    "001.y epoch=7 z",  # survives the `_` -> space rule: ` epoch=7 ` in the class list
    "002.q test_acc=0.99 r",  # its raw path, in the unreadable-picture warning, holds ` test_acc=0.99 `
    "003.a\nepoch=9 b",  # a newline: the rest of the class list would start a line with `epoch=9 `
    "004.images_per_sec=1e9_x rule_overfit=1 w",
)


def test_class_names_and_paths_cannot_forge_metric_lines(tmp_path):
    data = make_dataset(tmp_path / "data", {"train": 4, "valid": 2, "test": 2}, classes=HOSTILE_CLASSES)
    (data / "train" / HOSTILE_CLASSES[1] / "broken valid_acc=1 .jpg").write_bytes(b"\xff\xd8 not a picture")
    (data / "train" / HOSTILE_CLASSES[3] / "x\nbad_images=0.jpg").write_bytes(b"\x89PNG broken")
    os.mkfifo(data / "train" / HOSTILE_CLASSES[2] / "fifo\ntrain_loss=5.jpg")
    job, exit_code = run_job(tmp_path / "jobs", "hostile", {"train": data}, {"epochs": "2"})
    log = log_of(job)
    assert exit_code == 0, log[-3000:]
    assert "Skipping 2 unreadable picture(s) in 'train'" in log and "Skipped 1 entries in 'train'" in log
    # The classes are kept as they are, in the artifact: only their appearance in the log is quoted.
    assert json.loads((job.dir / "model" / "model.json").read_text())["classes"] == [
        "y epoch=7 z", "q test acc=0.99 r", "a\nepoch=9 b", "images per sec=1e9 x rule overfit=1 w"]
    # SageMaker's regexes over the whole log find exactly the job's own metric lines.
    regexes = [re.compile(d["Regex"]) for d in METRIC_DEFINITIONS]
    own = ("epoch=", "test_loss=", "best_valid_loss=", "rule_", "int8_kept=")  # the lines the job prints itself
    forged = [line for line in log.splitlines() if any(r.search(line) for r in regexes) and not line.startswith(own)]
    assert forged == []
    metrics = parse_metrics(log.splitlines())
    assert metrics["epoch"] == [1.0, 2.0] and metrics["bad_images"] == [2.0, 2.0]
    assert len(metrics["test_acc"]) == 1 and metrics["rule_overfit"] in ([0.0], [1.0], [-1.0])
    assert all(len(metrics[name]) == 2 for name in ("train_loss", "valid_acc", "images_per_sec"))


# --------------------------------------------------------------------------- 5. channels read safely
def test_a_debugger_local_path_holding_checkpoints_is_refused_not_emptied(tmp_path):
    job = prepared(tmp_path)
    kept = job.dir / "checkpoints" / "keep-me.pth"
    kept.write_bytes(b"precious")
    (job.dir / "input" / "config" / "debughookconfig.json").write_text(json.dumps(
        {"LocalPath": "/opt/ml/checkpoints", "HookParameters": {"save_interval": "1"}}))
    assert run_train(job) != 0, log_of(job)[-3000:]
    assert kept.read_bytes() == b"precious"
    assert re.match(r"The Debugger LocalPath \S+/checkpoints is \S+/checkpoints, which holds the job's own files",
                    job.failure_reason), job.failure_reason


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ".", "", "-rf", "x" * 129, "name\n"])
def test_job_names_that_are_not_one_safe_path_component_are_refused(tmp_path, name):
    victim = tmp_path / "outside" / "input" / "data" / "train"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    data = make_dataset(tmp_path / "data", {"train": 1, "valid": 1})
    with pytest.raises(LauncherError, match="is not allowed"):
        trees.prepare_job(tmp_path / "jobs", name, {"train": data}, TINY_HYPERPARAMETERS)
    assert (victim / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "jobs").exists()


# ---------------------------------------------------------------------------------- 6. pickles refused
class FileCreator:
    """Unpickling this creates `path` (the proof that code ran)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_armed_pickle(path, marker, wrap=None):
    """A torch file whose pickle would create `marker`; `wrap` puts it inside a plausible structure."""
    payload = FileCreator(marker)
    torch.save(wrap(payload) if wrap else payload, path)
    return path


def assert_armed(path, marker):
    """The same file, loaded the unsafe way in another process, does create the marker: its absence
    after the job means the job refused it, not that the pickle was harmless."""
    assert not marker.exists()
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   check=False, capture_output=True, timeout=120)
    assert marker.exists()


# Turns the default weights_only=False wherever a torch.load call does not pass it explicitly.
UNSAFE_DEFAULT = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def test_a_pickle_in_model_pth_is_refused(tmp_path, monkeypatch, trained_model_dir):
    from image_classifier.model import UnsafePickleError, load_artifact

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model_dir = tmp_path / "model"
    shutil.copytree(trained_model_dir, model_dir)
    marker = tmp_path / "created-by-model-pth"
    write_armed_pickle(model_dir / "model.pth", marker, wrap=lambda p: {"fc.weight": p})
    with pytest.raises(UnsafePickleError, match=r"^Refused to load \"\S+/model\.pth\": it is not a plain weights file "
                                                 r"\(its pickle asks for (io|builtins)\.open\)"):
        load_artifact(model_dir)
    assert_armed(model_dir / "model.pth", marker)


def test_a_pickle_in_the_checkpoint_is_refused_and_set_aside(tmp_path):
    job = prepared(tmp_path, hyperparameters={"epochs": "1"})
    marker = tmp_path / "created-by-checkpoint"
    armed = write_armed_pickle(job.dir / "checkpoints" / "checkpoint.pth", marker,
                               wrap=lambda p: {"model": p, "step": 1})
    assert run_train(job, UNSAFE_DEFAULT) == 0, log_of(job)[-3000:]
    assert not marker.exists()
    assert re.search(r"The checkpoint \S+/checkpoint\.pth does not load \(\"UnsafePickleError: Refused to load .+ "
                     r"asks for (io|builtins)\.open", log_of(job)), log_of(job)[-3000:]
    aside = next((job.dir / "checkpoints").glob("checkpoint.pth.unreadable-*"))
    assert "Resuming" not in log_of(job) and job.succeeded
    assert_armed(aside, marker)
    assert load_checkpoint(armed)["step"] == 1  # the job's own checkpoint, written afresh


def test_a_pickle_in_the_pretrained_channel_is_refused(tmp_path):
    weights = tmp_path / "pretrained"
    weights.mkdir()
    marker = tmp_path / "created-by-pretrained"
    armed = write_armed_pickle(weights / "resnet18-f37072fd.pth", marker, wrap=lambda p: {"conv1.weight": p})
    job = prepared(tmp_path, {"train": make_dataset(tmp_path / "data", {"train": 2, "valid": 2}), "pretrained": weights},
                   {"pretrained": "true"})
    assert run_train(job, UNSAFE_DEFAULT) != 0, log_of(job)[-3000:]
    assert re.match(r"Refused to load \"\S+/resnet18-f37072fd\.pth\": it is not a plain weights file \(its pickle asks "
                    r"for (io|builtins)\.open\)", job.failure_reason), job.failure_reason
    assert_armed(armed, marker)

