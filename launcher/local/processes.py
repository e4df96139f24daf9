"""The one process-tree stopper of the local runners (psutil), and the live output of a job's command.

A local job or server runs in a session of its own (`start_new_session=True`), so its pid is also its
process group's id. Its "tree" is that process, its descendants, and whatever else is still in its
process group: the toolkit's `train` may exit before the training script it started has saved its
checkpoint, and the script, reparented, is then no one's descendant but still in the group.
"""
import os
import signal
import subprocess
import sys
import time

import psutil

STOP_TIMEOUT_SECONDS = 30
# Off AWS there is no instance metadata service: without this, boto-based code in a local job waits on it.
OFF_AWS_ENV = {"AWS_EC2_METADATA_DISABLED": "true"}
POLL_SECONDS = 0.1


def tree(pid):
    """The live (not zombie) processes of `pid`'s tree: itself, its descendants, the rest of its group."""
    found = set()
    try:
        root = psutil.Process(pid)
        found.update([root, *root.children(recursive=True)])
    except psutil.NoSuchProcess:
        pass
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pid:
                found.add(process)
        except (OSError, psutil.Error):
            pass
    return {process for process in found if _alive(process)}


def _alive(process):
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_tree(pid, signum, everyone=True):
    """Send `signum` to every process of `pid`'s tree (`everyone`), or to `pid` only."""
    try:
        targets = tree(pid) if everyone else [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        targets = []
    for process in targets:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass


def stop_tree(pid, signum=signal.SIGTERM, timeout=STOP_TIMEOUT_SECONDS, everyone=False):
    """Send `signum` to `pid` (`everyone`: to its whole tree; None: none, only wait), give the tree `timeout`
    seconds to exit, then SIGKILL what is left. Returns how many processes the tree had."""
    members = tree(pid)
    count = len(members)
    if signum is not None:
        signal_tree(pid, signum, everyone)
    deadline = time.monotonic() + timeout
    while members and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(members, timeout=POLL_SECONDS)
        members = {process for process in alive if _alive(process)} | tree(pid)  # and any started meanwhile
    for process in members:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(members, timeout=5)
    return count


def echo_raw(line):
    sys.stdout.buffer.write(line)
    sys.stdout.flush()


def stream(command, log_file, env=None, echo=True):
    """Run `command` in its own session, copying its output live to `log_file` and to the terminal (`echo`:
    True, or a callable given each line, e.g. job_output.Display).
    Ctrl-C or SIGTERM is passed on to its tree as SIGTERM so the job checkpoints; returns the exit code
    once the whole tree has exited (a job's script may outlive the toolkit that started it)."""
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        previous = signal.signal(signal.SIGTERM, lambda *_: signal_tree(process.pid, signal.SIGTERM))
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if echo:
                    (echo_raw if echo is True else echo)(line)
            return process.wait()
        except KeyboardInterrupt:
            signal_tree(process.pid, signal.SIGTERM)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            wait_tree(process.pid)


def wait_tree(pid, timeout=120):
    """Wait for `pid`'s tree to exit on its own (a job saving its checkpoint), SIGKILL it after `timeout`."""
    stop_tree(pid, None, timeout)
