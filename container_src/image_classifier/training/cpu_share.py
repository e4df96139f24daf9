"""A CPU training job that gives way to other processes.

On a machine where something else keeps a core busy (a browser, a compile, another job), a step on every core
waits at each parallel region for the thread that shares its core with that process: measured here, a
ResNet-18 step at 32 px ran 6x slower on two threads than on one (bench/bench_busy_machine.py,
docs/BENCHMARKS.md). So every INTERVAL_SECONDS the job measures the CPU time other processes took (the
machine's busy time less its own process tree's), trains on the cores left free, and takes them back when
they free. It counts what others took, so the summary can say when a job ran slower than the machine can.

Only a CPU job alone on its host does this (another rank of the same job is not "another process"), and only
when `launch.py train --local` asks (constants.GIVE_WAY_ENV): thread counts change the order of floating-point
sums, so a job that gave way is not bit-for-bit the run it would have been on a quiet machine, and a SageMaker
job (alone on its host) or a job run without the launcher keeps its threads.
"""
import logging
import os
import time

import psutil
import torch

from ..constants import CORE_TAKEN_FROM

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 2.0  # how often the share is measured: long enough for a steady figure, short for a step


def _busy_seconds(times):
    return (times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
            + getattr(times, "steal", 0.0))  # steal: the hypervisor gave the core to another machine


def _own_seconds(process):
    """CPU seconds of this process, its children alive (loader workers) and those it reaped."""
    total = 0.0
    for member in (process, *process.children(recursive=True)):
        try:
            times = member.cpu_times()
        except psutil.Error:  # gone between the listing and the read
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def cores_available():
    return len(os.sched_getaffinity(0))


class CpuShare:
    """Call `step()` after each training step; `taken()` is the mean number of cores other processes kept busy
    since the last call (None before a full interval)."""

    def __init__(self, cores=None, interval=INTERVAL_SECONDS, clock=time.monotonic, sample=None):
        """`sample()`: (CPU seconds the machine was busy, CPU seconds of this job) so far; default: measured."""
        self.cores = cores or cores_available()
        self.max_threads = torch.get_num_threads()
        self.interval, self.clock = interval, clock
        process = psutil.Process()
        self.sample = sample or (lambda: (_busy_seconds(psutil.cpu_times()), _own_seconds(process)))
        self.last = (self.clock(), *self.sample())
        self.samples = []  # (seconds, cores taken elsewhere) per interval since the last taken()

    def step(self, at_least=None):
        """Measure when an interval has passed (or `at_least` seconds), and train on the cores left free."""
        now = self.clock()
        if now - self.last[0] < (self.interval if at_least is None else at_least):
            return
        then, busy, own = self.last
        self.last = sample = (now, *self.sample())
        seconds = sample[0] - then
        others = max(0.0, (sample[1] - busy) - (sample[2] - own)) / seconds
        self.samples.append((seconds, others))
        self.set_threads(threads_for(self.cores, others, self.max_threads))

    def set_threads(self, threads):
        if threads != torch.get_num_threads():
            log.info("Other processes keep %s of the %d cores busy: training on %d thread(s)",
                     f"{self.samples[-1][1]:.1f}" if self.samples else "some", self.cores, threads)
            torch.set_num_threads(threads)

    def taken(self):
        self.step(at_least=0.05)  # the epoch's last part too
        seconds = sum(s for s, _ in self.samples)
        mean = sum(s * o for s, o in self.samples) / seconds if seconds else None
        self.samples = []
        return mean


def threads_for(cores, taken_elsewhere, max_threads):
    """Threads on the cores left free: from CORE_TAKEN_FROM up, what others use counts as a whole core."""
    taken = int(taken_elsewhere + (1 - CORE_TAKEN_FROM))
    return max(1, min(max_threads, cores - taken))
