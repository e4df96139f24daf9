"""Profiling behind the `profile` hyperparameter: torch.profiler over a short window, a system monitor.

smdebug's framework profiler does not support torch 2.x, so this uses `torch.profiler` directly: it
records `profile-steps` training steps from `profile-start-step`, then writes a Chrome trace (open it in
chrome://tracing or https://ui.perfetto.dev) and the top operators (a table and JSON). The system monitor
samples CPU, memory and (when present) GPU use every second for the whole run, and the training loop tells
it, per step, how long it waited for data and how long it computed. Everything lands in output/data/.
"""
import json
import logging
import os
import threading
import time

import psutil
import torch

from . import constants

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 1.0
TOP_OPERATORS = 25


class TorchProfilerWindow:
    """torch.profiler over steps [start, start + steps); `step()` is called once per training step."""

    def __init__(self, out_dir, start_step, steps, cuda=False):
        self.out_dir = out_dir
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.sort_key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        # One warm-up step before the window when there is room for it (its timings are discarded).
        warmup = 1 if start_step >= 1 else 0
        schedule = torch.profiler.schedule(skip_first=start_step - warmup, wait=0, warmup=warmup, active=steps,
                                           repeat=1)
        self.profiler = torch.profiler.profile(activities=activities, schedule=schedule,
                                               on_trace_ready=self._export)
        self.exported = False
        self.profiler.start()

    def step(self):
        if not self.exported:
            self.profiler.step()

    def stop(self):
        if self.profiler is not None:
            self.profiler.stop()  # a window that never completed (short run) is exported here
            self.profiler = None

    def _export(self, prof):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out_dir / constants.PROFILER_TRACE_FILE))
        averages = prof.key_averages()
        (self.out_dir / constants.PROFILER_TABLE_FILE).write_text(
            averages.table(sort_by=self.sort_key, row_limit=TOP_OPERATORS))
        rows = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPERATORS]
        (self.out_dir / constants.PROFILER_OPS_FILE).write_text(json.dumps([{
            "name": e.key, "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1000, "cpu_total_ms": e.cpu_time_total / 1000,
            "self_device_ms": getattr(e, "self_device_time_total", 0) / 1000,
        } for e in rows], indent=1))
        self.exported = True
        log.info("torch.profiler: trace and top operators written to %s", self.out_dir)


class SystemMonitor:
    """A daemon thread sampling this process tree and the machine every SAMPLE_SECONDS."""

    def __init__(self, cuda=False, interval=SAMPLE_SECONDS):
        self.cuda = cuda
        self.interval = interval
        self.samples = []
        self.data_seconds, self.compute_seconds = [], []
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._started = time.monotonic()
        psutil.cpu_percent()  # the first call only sets the baseline
        self._thread = threading.Thread(target=self._run, name="system-monitor", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.samples.append(self.sample())

    def sample(self):
        processes = [self._process]
        try:
            processes += self._process.children(recursive=True)  # data-loading workers
        except psutil.Error:
            pass
        rss = 0
        for process in processes:
            try:
                rss += process.memory_info().rss
            except psutil.Error:  # a worker that just ended
                pass
        row = {"t": round(time.monotonic() - self._started, 2), "cpu_percent": psutil.cpu_percent(),
               "memory_percent": psutil.virtual_memory().percent, "rss_mb": round(rss / 2**20, 1)}
        if self.cuda:
            row["gpu_memory_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            try:
                row["gpu_percent"] = torch.cuda.utilization()
            except Exception:  # noqa: BLE001 - needs NVML (pynvml); memory alone is still useful
                pass
        return row

    def record_step(self, data_seconds, compute_seconds):
        self.data_seconds.append(data_seconds)
        self.compute_seconds.append(compute_seconds)

    def stop(self):
        self._stop.set()
        self._thread.join()

    def summary(self):
        waited, computed = sum(self.data_seconds), sum(self.compute_seconds)
        summary = {"steps": len(self.data_seconds), "seconds": round(time.monotonic() - self._started, 1),
                   "data_wait_share": waited / (waited + computed) if waited + computed else 0.0,
                   "cpu_count": os.cpu_count()}
        for key in ("cpu_percent", "memory_percent", "rss_mb", "gpu_percent", "gpu_memory_mb"):
            values = [s[key] for s in self.samples if key in s]
            if values:
                summary[f"{key}_mean"] = sum(values) / len(values)
                summary[f"{key}_max"] = max(values)
        return summary


class Profiling:
    """What `profile=true` turns on; called by the training loop after each training step."""

    def __init__(self, out_dir, start_step, steps, cuda):
        self.out_dir = out_dir
        self.window = TorchProfilerWindow(out_dir, start_step, steps, cuda)
        self.monitor = SystemMonitor(cuda)
        self.closed = False

    @classmethod
    def start(cls, hp, out_dir, device):
        """A Profiling when `profile=true`, else None (the loop then skips it: off costs nothing)."""
        if not hp.profile:
            return None
        log.info("Profiling: torch.profiler on training steps %d-%d, system monitor every %.0f s",
                 hp.profile_start_step, hp.profile_start_step + hp.profile_steps - 1, SAMPLE_SECONDS)
        return cls(out_dir, hp.profile_start_step, hp.profile_steps, device.type == "cuda")

    def __call__(self, data_seconds, compute_seconds):
        self.monitor.record_step(data_seconds, compute_seconds)
        self.window.step()

    def close(self):
        """Stop both and write system_metrics.json; returns the monitor's summary. Idempotent: every exit of
        the job closes it (a SIGTERM stop or an error too), the normal end first, before the test."""
        if self.closed:
            return None
        self.closed = True
        self.window.stop()
        self.monitor.stop()
        summary = self.monitor.summary()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / constants.SYSTEM_METRICS_FILE).write_text(json.dumps({
            "summary": summary, "interval_s": self.monitor.interval, "samples": self.monitor.samples,
            "steps": {"data_seconds": self.monitor.data_seconds, "compute_seconds": self.monitor.compute_seconds},
        }))
        log.info("System monitor: %d steps, %.0f%% of step time waiting for data, CPU %.0f%% on average",
                 summary["steps"], 100 * summary["data_wait_share"], summary.get("cpu_percent_mean", 0))
        return summary
