"""A CPU job gives way to other processes (training/cpu_share.py): it measures the cores they keep busy, trains
on the cores left free, takes them back when they free, and a local job's summary says it ran slower."""
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from image_classifier.training.cpu_share import CpuShare, cores_available, threads_for
from launcher.local.training import summary

SPIN = "while True:\n    pass\n"


@pytest.mark.parametrize("cores, taken, max_threads, threads", [
    (2, 0.0, 2, 2), (2, 0.4, 2, 2), (2, 0.5, 2, 1), (2, 1.0, 2, 1), (2, 1.9, 2, 1), (2, 3.0, 2, 1),
    (8, 1.6, 8, 6), (8, 2.4, 8, 6), (8, 0.0, 4, 4), (8, 5.0, 4, 3),
])
def test_threads_go_to_the_cores_left_free(cores, taken, max_threads, threads):
    assert threads_for(cores, taken, max_threads) == threads


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def steps_for(share, seconds):
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        share.step()
        time.sleep(0.02)  # this process stays nearly idle: what is busy is the other one


def test_threads_follow_what_other_processes_take_and_come_back(torch_threads):
    torch.set_num_threads(4)
    clock = iter(range(0, 1000, 2)).__next__  # one interval (2 s) per step
    busy = own = 0.0
    taken_by_others = iter([0.0, 0.1, 1.0, 2.2, 2.2, 0.6, 0.0])  # the first: the start, before any interval

    def sample():  # this job uses 1 core-second a second, the others what the script says
        nonlocal busy, own
        others = next(taken_by_others, 0.0)
        own, busy = own + 2, busy + 2 + 2 * others
        return busy, own

    share = CpuShare(cores=4, interval=2, clock=clock, sample=sample)
    seen = []
    for _ in range(6):
        share.step()
        seen.append(torch.get_num_threads())
    assert seen == [4, 3, 2, 2, 3, 4]  # 0.1: noise; 1.0 core taken: 3 left; 2.2: 2 left; 0.6 counts as 1; all back
    assert share.taken() == pytest.approx((0.1 + 1.0 + 2.2 + 2.2 + 0.6 + 0.0 + 0.0) / 7)  # taken() measures once more


@pytest.mark.skipif(cores_available() < 2, reason="needs two cores: one to take, one to give way to")
def test_a_core_another_process_keeps_busy_is_measured_and_given_way_to(torch_threads):
    torch.set_num_threads(cores_available())
    share = CpuShare(interval=0.25)
    # Not a child of this process (whose children are its own work, as a job's loader workers are): the shell
    # starts it in the background and exits, so it is another process, as a browser would be.
    pid = int(subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!', SPIN],
                             capture_output=True, text=True, check=True).stdout)
    try:
        steps_for(share, 1.5)
        taken = share.taken()
    finally:
        os.kill(pid, signal.SIGKILL)
    assert taken >= 0.7, taken  # the spinner's core, measured as another process's
    assert torch.get_num_threads() < share.max_threads


def test_its_own_work_is_not_counted_as_anothers(torch_threads):
    torch.set_num_threads(cores_available())
    share = CpuShare(interval=0.25)
    quiet = CpuShare(interval=0.25)  # the machine with this process idle, measured just before
    steps_for(quiet, 1.0)
    ends = time.monotonic() + 1.5
    x = torch.randn(256, 256)
    share.last = (time.monotonic(), *share.sample())
    while time.monotonic() < ends:  # this process busy on every thread
        for _ in range(20):
            x = torch.tanh(x @ x)
        share.step()
    assert share.taken() < quiet.taken() + 0.5  # what else ran meanwhile, not this process's own cores


def job_named(tmp_path):
    return SimpleNamespace(name="j1", model_tar=tmp_path / "model.tar.gz", log_file=tmp_path / "train.log")


def test_the_summary_says_when_other_processes_slowed_the_job(tmp_path):
    metrics = {"test_acc": 0.9, "best_valid_acc": 0.91}
    slowed = summary(job_named(tmp_path), metrics, "cpu-quick", 70, taken_elsewhere=1.0)
    assert "other processes kept 1.0 of this machine's" in slowed and "ran slower than this machine can" in slowed
    for quiet in (None, 0.2):
        assert "slower" not in summary(job_named(tmp_path), metrics, "cpu-quick", 70, taken_elsewhere=quiet)
