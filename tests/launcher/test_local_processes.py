"""The local runners' one process-tree stopper, on real process trees (sleeping shells: no CPU load)."""
import signal
import subprocess
import time

import psutil

from launcher.local import processes


def start(script):
    """`sh -c script` in a session of its own, as the local runners start jobs and servers."""
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def wait_for(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_stop_tree_stops_the_process_and_every_descendant():
    shell = start("sleep 300 & sleep 300 & wait")
    wait_for(lambda: len(processes.tree(shell.pid)) == 3)
    members = processes.tree(shell.pid)
    assert processes.stop_tree(shell.pid, timeout=2) == 3  # the sleepers ignore their parent's end: killed
    shell.wait(timeout=5)
    assert not any(process.is_running() and process.status() != psutil.STATUS_ZOMBIE for process in members)


def test_a_group_member_that_outlived_its_parent_is_waited_for_then_killed():
    """The toolkit's `train` may exit before the script it started: the script, reparented, is still
    the job's (its process group's) until it ends, or is killed after the timeout."""
    shell = start("sleep 300 & exit 0")
    assert shell.wait(timeout=5) == 0
    wait_for(lambda: len(processes.tree(shell.pid)) == 1)
    orphan = next(iter(processes.tree(shell.pid)))
    started = time.monotonic()
    processes.wait_tree(shell.pid, timeout=1)
    assert time.monotonic() - started < 10
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    assert processes.tree(shell.pid) == set()


def test_signal_tree_reaches_every_process_of_the_group():
    shell = start("sleep 300 & sleep 300 & wait")
    wait_for(lambda: len(processes.tree(shell.pid)) == 3)
    sleepers = [process for process in processes.tree(shell.pid) if process.name() == "sleep"]
    processes.signal_tree(shell.pid, signal.SIGTERM)
    shell.wait(timeout=10)
    psutil.wait_procs(sleepers, timeout=10)
    assert not any(process.is_running() and process.status() != psutil.STATUS_ZOMBIE for process in sleepers)
