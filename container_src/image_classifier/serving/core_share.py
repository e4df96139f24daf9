"""Sharing the CPU cores between the model server's workers, request by request.

MMS hands each worker one request at a time, and on a CPU a request's forward pass runs on the worker's
threads. A fixed split has to choose: one worker with every core (a lone request is fast, but requests wait
in line and two threads scale worse than two requests side by side) or one single-thread worker per core
(full throughput, but a lone request runs on one core). Here each worker takes, per request, every core
when no other worker is busy and its share of the cores (cores / workers) when another one is: the lone
request's latency of the first split with the throughput of the second (docs/BENCHMARKS.md).

The workers are separate processes started by MMS's Java frontend, so they tell each other that they are
busy through one lock file per worker in serve's runtime folder: a worker holds an exclusive flock on a
free one while it answers, and counts the others it cannot lock. The kernel drops a dead worker's lock.
"""
import contextlib
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class CoreShare:
    """`claim()` marks this worker busy for a request's time and says whether it is the only busy one."""

    def __init__(self, folder, workers):
        folder = Path(folder)
        self.slots = [os.open(folder / f"worker-{index}.busy", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                      for index in range(workers)]

    @staticmethod
    def _try_lock(fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    @contextlib.contextmanager
    def claim(self):
        """Yields True when no other worker is busy. Holds a free slot meanwhile (none free: MMS runs more
        workers than serve asked for; the request then counts as a busy one's) and counts the slots that
        other workers hold."""
        mine = next((fd for fd in self.slots if self._try_lock(fd)), None)
        busy_others = 0
        for fd in self.slots:
            if fd == mine:
                continue
            if self._try_lock(fd):
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                busy_others += 1
        try:
            yield busy_others == 0
        finally:
            if mine is not None:
                fcntl.flock(mine, fcntl.LOCK_UN)


def from_environment(served, folder):
    """This worker's CoreShare when serve gave its workers a slot folder and there is something to share
    (settings: several CPU workers, fewer threads per request while others are busy), else None."""
    if not folder or not served.cores_shared:
        return None
    log.info("Cores shared by %d workers: %d threads per request while the others are idle, %d while not",
             served.workers, served.torch_threads, served.narrow_threads)
    return CoreShare(folder, served.workers)
