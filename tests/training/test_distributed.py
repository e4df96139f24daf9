"""Data-parallel training: two processes on one CPU host (gloo) under the toolkit's own torchrun runner,
and two emulated hosts on loopback (`launch.py train --local process --instance-count 2`)."""
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from image_classifier import constants
from image_classifier.training import loop
from image_classifier.preprocessing import build_transforms
from image_classifier.training.data import EpochSampler, PictureDataset, make_loader
from image_classifier.training.layout import load_splits
from image_classifier.metrics import parse_metrics
from image_classifier.training.hyperparameters import Hyperparameters
from image_classifier.model import build_model, load_artifact
from launcher.local import hosts, process as local_process, processes, trees
from conftest import PROJECT_DIR, TINY_HYPERPARAMETERS, make_dataset

# Two processes on this host: the toolkit's torchrun runner, its processes-per-host setting.
TWO_PROCESSES = {"sagemaker_torch_distributed_enabled": "true", "sagemaker_mpi_num_of_processes_per_host": "2"}
# 13 train pictures per class: 39 in all, an odd number, so the shards need evening out.
DATA_SIZES = {"train": 13, "valid": 5, "test": 5}


# ------------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize("size", [39, 40, 41])
def test_training_shards_are_disjoint_equal_and_cover_all_but_the_remainder(size):
    for epoch in range(3):
        shards = []
        for rank in range(2):
            sampler = EpochSampler(size, seed=7, shuffle=True, rank=rank, world_size=2)
            sampler.set_epoch(epoch)
            shards.append([index for _, index in sampler])
        assert len(shards[0]) == len(shards[1]) == size // 2  # every rank takes the same number of steps
        assert not set(shards[0]) & set(shards[1])
        assert len(set(shards[0]) | set(shards[1])) == size - size % 2


def test_evaluation_shards_are_disjoint_and_cover_everything():
    shards = [[index for _, index in EpochSampler(41, seed=7, shuffle=False, rank=rank, world_size=2)]
              for rank in range(2)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(41))


def test_a_resumed_shard_continues_where_it_stopped():
    sampler = EpochSampler(40, seed=3, shuffle=True, rank=1, world_size=2)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start=8)
    assert list(sampler) == whole[8:]


# ------------------------------------------------------------------------------------ real jobs
def two_process_job(tmp_path, name, data, **hps):
    hyperparameters = dict(TINY_HYPERPARAMETERS, **TWO_PROCESSES, **hps)
    return hosts.prepare_hosts(tmp_path / "jobs", name, {"train": data}, hyperparameters, 1)[0]


def start(job):
    """The host's `train` (toolkit, framework module, torchrun) as a process of its own group."""
    train = os.path.join(os.path.dirname(sys.executable), "train")
    return subprocess.Popen([train], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=local_process.host_environment(job), start_new_session=True)


def output_until(process, prefix):
    """The job's output up to and including the first line starting with `prefix`."""
    lines = []
    while not lines or not lines[-1].startswith(prefix):
        line = process.stdout.readline()
        if not line:
            raise AssertionError("".join(lines[-40:]))
        lines.append(line)
    return lines


def workers(process):
    """The training processes torchrun started, by rank."""
    found = {}
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
            if rank is not None and "train.py" in " ".join(child.cmdline()):
                found[int(rank)] = child
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "d", DATA_SIZES)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """An uninterrupted two-process job of two epochs."""
    tmp = tmp_path_factory.mktemp("reference")
    job = two_process_job(tmp, "reference", data, epochs="2")
    exit_code = local_process.train_hosts([job], echo=False)
    trees.finish(job)
    assert exit_code == 0 and job.succeeded, job.log_file.read_text()[-4000:]
    return job


def evaluate_alone(weights, data, split):
    """A single-process evaluation of `weights` on a whole split: what one process would report."""
    hp = Hyperparameters.from_strings(TINY_HYPERPARAMETERS)
    splits = load_splits({"train": data})
    _, eval_tf = build_transforms(hp.image_size, hp.augment)
    dataset = PictureDataset(splits.samples[split], eval_tf, hp.seed)
    loader = make_loader(dataset, EpochSampler(len(dataset), hp.seed, shuffle=False), hp.batch_size, 0)
    model = build_model(hp.arch, len(splits.classes))
    model.load_state_dict(weights)
    loss, accuracy, _, _, _ = loop.evaluate(model, torch.nn.CrossEntropyLoss(), loader, torch.device("cpu"))
    return loss, accuracy


@pytest.mark.slow
def test_two_processes_write_one_model_one_checkpoint_and_reduced_metrics(reference, data):
    log = reference.log_file.read_text()
    assert "1 host(s) x 2 process(es) under torchrun" in log
    assert "torchrun --nnodes 1 --nproc_per_node 2" in log  # the toolkit's own runner
    # Only rank 0 prints the metric lines and writes the model and the checkpoint.
    metrics = parse_metrics(log.splitlines())
    assert metrics["epoch"] == [1.0, 2.0] and len(metrics["test_loss"]) == 1
    assert sorted(p.name for p in (reference.dir / "model").iterdir()) == ["model.json", "model.pth"]
    # One checkpoint (with the copy of the one before it, kept in case the newest does not load), no per-rank files.
    assert sorted(p.name for p in (reference.dir / "checkpoints").iterdir()) == [
        "best.pth", "checkpoint.previous.pth", "checkpoint.pth"]
    # Valid and test figures are reduced over both shards: equal to one process evaluating the same weights.
    last = torch.load(reference.dir / "checkpoints" / "checkpoint.pth", weights_only=True)["model"]
    valid_loss, valid_acc = evaluate_alone(last, data, "valid")
    assert metrics["valid_loss"][-1] == pytest.approx(valid_loss, abs=2e-4)
    assert metrics["valid_acc"][-1] == pytest.approx(valid_acc, abs=1e-4)
    model, _ = load_artifact(reference.dir / "model")
    test_loss, test_acc = evaluate_alone(model.state_dict(), data, "test")
    assert metrics["test_loss"] == [pytest.approx(test_loss, abs=2e-4)]
    assert metrics["test_acc"] == [pytest.approx(test_acc, abs=1e-4)]
    # Every test picture was predicted once (the ranks' shards gathered).
    predictions = (reference.dir / "output" / "data" / "test_predictions.json").read_text()
    assert predictions.count(",") + 1 >= 2 * 15 - 1


@pytest.mark.slow
def test_sigterm_stops_every_rank_and_a_restart_ends_where_an_uninterrupted_job_does(tmp_path, reference, data):
    job = two_process_job(tmp_path, "interrupted", data, epochs="2")
    process = start(job)
    seen = output_until(process, "epoch=1 ")
    for worker in workers(process).values():  # SageMaker's stop reaches every process
        worker.send_signal(signal.SIGTERM)
    processes.signal_tree(process.pid, signal.SIGTERM)
    seen += process.stdout.readlines()
    assert process.wait(timeout=180) != 0
    processes.wait_tree(process.pid)
    log = "".join(seen)
    stops = re.findall(r"Stopped by SIGTERM (in epoch \d+ at step \d+|after epoch \d+)", log)
    assert len(stops) == 2 and len(set(stops)) == 1, log[-4000:]  # both ranks, at the same step
    assert (job.dir / "checkpoints" / "checkpoint.pth").is_file() and not job.succeeded

    job = two_process_job(tmp_path, "interrupted", data, epochs="2")
    assert local_process.train_hosts([job], echo=False) == 0 and job.succeeded, job.log_file.read_text()[-4000:]
    assert "Resuming from" in job.log_file.read_text()
    expected = torch.load(reference.dir / "model" / "model.pth", weights_only=True)
    resumed = torch.load(job.dir / "model" / "model.pth", weights_only=True)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    # The resumed epoch's train metrics count each picture once (the checkpoint keeps every rank's sums).
    before, after = (parse_metrics(j.log_file.read_text().splitlines()) for j in (reference, job))
    assert after["train_loss"][-1] == pytest.approx(before["train_loss"][-1], rel=1e-6)
    assert after["train_acc"][-1] == pytest.approx(before["train_acc"][-1], abs=1e-9)


@pytest.mark.slow
def test_a_stop_inside_epoch_2_resumes_with_both_ranks_sums(tmp_path, reference, data, monkeypatch):
    """The job stops itself after global step 5 (epoch 2, step 2 of 3: 19 pictures per rank, batch 8), in the
    middle of an epoch whatever the machine's speed. The checkpoint holds both ranks' running sums, and the
    resumed epoch 2 reports exactly the train metrics of the uninterrupted run (each picture counted once)."""
    steps_per_epoch, stop_at = 3, 5
    monkeypatch.setenv(constants.STOP_AT_STEP_ENV, str(stop_at))
    job = two_process_job(tmp_path, "stopped", data, epochs="2")
    assert local_process.train_hosts([job], echo=False) != 0
    log = job.log_file.read_text()
    stops = re.findall(r"Stopped by SIGTERM in epoch (\d+) at step (\d+) \(global step (\d+)\)", log)
    assert stops == [("2", "2", str(stop_at))] * 2, log[-4000:]  # both ranks, inside epoch 2
    saved = torch.load(job.dir / "checkpoints" / "checkpoint.pth", weights_only=True)
    assert saved["step"] == stop_at and saved["state"]["epoch"] == 1
    progress = saved["state"]["progress"]
    assert progress["step"] == stop_at - steps_per_epoch
    assert progress["images"] == 2 * 2 * 8  # 2 steps of 8 pictures on each of the 2 ranks, not rank 0's 16
    assert 0 < progress["loss"] and 0 <= progress["correct"] <= progress["images"]

    monkeypatch.delenv(constants.STOP_AT_STEP_ENV)
    job = two_process_job(tmp_path, "stopped", data, epochs="2")
    assert local_process.train_hosts([job], echo=False) == 0 and job.succeeded, job.log_file.read_text()[-4000:]
    log = job.log_file.read_text()
    assert f"at global step {stop_at} (epoch 2, step 2 of {steps_per_epoch})" in log
    before, after = (parse_metrics(text.splitlines()) for text in (reference.log_file.read_text(), log))
    assert after["epoch"][-1] == 2.0
    assert after["train_loss"][-1] == pytest.approx(before["train_loss"][-1], rel=1e-6)
    assert after["train_acc"][-1] == pytest.approx(before["train_acc"][-1], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["dead", "stuck"])
def test_a_dead_or_stuck_rank_fails_the_job_with_a_failure_file(tmp_path, data, monkeypatch, fault):
    monkeypatch.setenv("IMAGE_CLASSIFIER_COLLECTIVE_TIMEOUT", "20")
    job = two_process_job(tmp_path, f"fault-{fault.name}", data, epochs="20")
    started = time.monotonic()
    process = start(job)
    output_until(process, "epoch=1 ")
    ranks = workers(process)
    ranks[1].send_signal(fault)
    try:
        process.stdout.read()
        assert process.wait(timeout=300) != 0
        processes.wait_tree(process.pid)
    finally:
        for worker in ranks.values():  # none should be left; a stopped one would hold the test
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                pass
    assert time.monotonic() - started < 300
    assert not job.succeeded and job.failure_reason, job.log_file.read_text()[-3000:]


@pytest.mark.slow
def test_launch_py_trains_over_two_emulated_hosts(tmp_path, data):
    result = subprocess.run(
        [sys.executable, "launch.py", "train", "--local", "process", "--instance-count", "2", "--data", str(data),
         "--job-name", "two-hosts", "--jobs-dir", str(tmp_path / "jobs")]
        + [f"--hp={k}={v}" for k, v in TINY_HYPERPARAMETERS.items()] + ["--hp", "epochs=1"],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Training job two-hosts completed in " in result.stdout and "test accuracy " in result.stdout
    master, second = tmp_path / "jobs" / "two-hosts", tmp_path / "jobs" / "two-hosts" / "hosts" / "algo-2"
    # the job's own lines are in its log (the terminal shows progress and the summary)
    assert "2 host(s) x 1 process(es) under torchrun, master \"algo-1\"" in (master / "train.log").read_text()
    assert (master / "model.tar.gz").is_file() and not any((second / "model").iterdir())
    for host, folder in (("algo-1", master), ("algo-2", second)):
        config = (folder / "input" / "config" / "resourceconfig.json").read_text()
        assert f'"current_host": "{host}"' in config and '"hosts": ["algo-1", "algo-2"]' in config
    assert (second / "output" / "success").is_file()


@pytest.mark.slow
def test_hyperparameters_with_shell_syntax_never_reach_a_shell_in_a_two_host_job(tmp_path, data):
    """The toolkit's torchrun runner runs its command through a shell: `_note` would have run there (it did,
    before the script got no arguments). The job then refuses the unknown `_` key, naming it."""
    marker = tmp_path / "injected"
    hps = dict(TINY_HYPERPARAMETERS, **{"sagemaker_torch_distributed_enabled": "true", "_note": f"$(touch {marker})",
                                        "sagemaker_note": f"`touch {marker}`"})
    jobs = hosts.prepare_hosts(tmp_path / "jobs", "injection", {"train": data}, hps, 2)
    exit_code = local_process.train_hosts(jobs, echo=False)
    log = jobs[0].log_file.read_text()
    assert "2 host(s) x 1 process(es) under torchrun" in log, log[-3000:]
    assert not marker.exists()
    assert exit_code != 0 and not jobs[0].succeeded
    assert jobs[0].failure_reason.startswith("Unknown hyperparameter '_note'."), jobs[0].failure_reason
