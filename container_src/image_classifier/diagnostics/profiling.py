"""Profiling: a system monitor for every job, and torch.profiler over a short window behind `profile`.

The system monitor samples CPU, I/O wait, memory and (when present) every visible GPU's utilisation and
memory every second for the whole run, and the training loop tells it, per step, how long it waited for
data and how long it computed. It is cheap (one thread, one sample a second), so it runs in every job: the
epoch metric line reads the GPU's utilisation from it and the profiler rules (profiler_rules.py) judge it
at the end. smdebug's framework profiler does not support torch 2.x, so `profile=true` adds `torch.profiler`
directly: it records `profile-steps` training steps from `profile-start-step`, then writes a Chrome trace
(chrome://tracing or https://ui.perfetto.dev) and the top operators (a table and JSON), and the monitor's
samples go to system_metrics.json. Everything lands in output/data/.
"""
import json
import logging
import os
import subprocess
import threading
import time

import psutil
import torch

from .. import constants

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
        self.gpus = torch.cuda.device_count() if cuda else 0
        self.interval = interval
        self.samples = []
        self.data_seconds, self.compute_seconds = [], []
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._started = time.monotonic()
        psutil.cpu_percent()  # the first call only sets the baseline
        psutil.cpu_times_percent()
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
               "iowait_percent": getattr(psutil.cpu_times_percent(), "iowait", None),
               "memory_percent": psutil.virtual_memory().percent, "rss_mb": round(rss / 2**20, 1)}
        if self.cuda:
            row["gpu_memory_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            row.update(_gpu_use(self.gpus))
        return row

    def mark(self):
        """A position in the samples (an epoch's start), for `gpu_utilization(since=)`."""
        return len(self.samples)

    def gpu_utilization(self, since=0):
        """Mean utilisation (%) of the visible GPUs over the samples since `since`; None without any."""
        values = [sum(s["gpu_percent"]) / len(s["gpu_percent"]) for s in self.samples[since:] if s.get("gpu_percent")]
        return sum(values) / len(values) if values else None

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
        for key in ("cpu_percent", "iowait_percent", "memory_percent", "rss_mb", "gpu_percent",
                    "gpu_memory_percent", "gpu_memory_mb"):
            values = [s[key] if not isinstance(s[key], list) else sum(s[key]) / len(s[key])
                      for s in self.samples if s.get(key) not in (None, [])]
            if values:
                summary[f"{key}_mean"] = sum(values) / len(values)
                summary[f"{key}_max"] = max(values)
        return summary


def _gpu_use(gpus):
    """Every visible GPU's utilisation and used memory (% of its memory), as the driver reports them (the whole
    device, every process): through NVML when pynvml is installed, else from `nvidia-smi` (which the NVIDIA
    container runtime mounts on GPU hosts); empty when neither answers."""
    try:
        return {"gpu_percent": [torch.cuda.utilization(i) for i in range(gpus)],
                "gpu_memory_percent": [round(100 * torch.cuda.device_memory_used(i)
                                             / torch.cuda.get_device_properties(i).total_memory, 2)
                                       for i in range(gpus)]}
    except Exception:  # noqa: BLE001 - no pynvml in the image: ask nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5,
                             check=True).stdout
        rows = [[float(v) for v in line.split(",")] for line in out.strip().splitlines()][:gpus]
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return {"gpu_percent": [row[0] for row in rows],
            "gpu_memory_percent": [round(100 * row[1] / row[2], 2) if row[2] else 0.0 for row in rows]}


class Profiling:
    """The system monitor (always) and the torch.profiler window (`profile=true`); called by the training loop
    after each training step."""

    def __init__(self, out_dir, cuda, window=None):
        self.out_dir = out_dir
        self.window = window
        self.monitor = SystemMonitor(cuda)
        self.closed = False
        self.first_step_at = None  # time.time() of the first training step's start

    @classmethod
    def start(cls, hp, out_dir, device):
        """The monitor, and the torch.profiler window when `profile=true`."""
        cuda = device.type == "cuda"
        window = None
        if hp.profile:
            log.info("Profiling: torch.profiler on training steps %d-%d, system monitor every %.0f s",
                     hp.profile_start_step, hp.profile_start_step + hp.profile_steps - 1, SAMPLE_SECONDS)
            window = TorchProfilerWindow(out_dir, hp.profile_start_step, hp.profile_steps, cuda)
        return cls(out_dir, cuda, window)

    def __call__(self, data_seconds, compute_seconds):
        if self.first_step_at is None:
            self.first_step_at = time.time() - data_seconds - compute_seconds
        self.monitor.record_step(data_seconds, compute_seconds)
        if self.window is not None:
            self.window.step()

    def init_seconds(self):
        """Seconds from this process's start to its first training step (None before one)."""
        if self.first_step_at is None:
            return None
        return self.first_step_at - psutil.Process().create_time()

    def profile_data(self, workers, batch_size, cpu_count):
        """What the profiler rules judge (profiler_rules.ProfileData)."""
        from .profiler_rules import ProfileData

        return ProfileData(device="cuda" if self.monitor.cuda else "cpu", samples=list(self.monitor.samples),
                           data_seconds=list(self.monitor.data_seconds),
                           compute_seconds=list(self.monitor.compute_seconds), init_seconds=self.init_seconds(),
                           workers=workers, cpu_count=cpu_count, batch_size=batch_size)

    def close(self):
        """Stop both and (profile=true) write system_metrics.json; returns the monitor's summary. Idempotent:
        every exit of the job closes it (a SIGTERM stop or an error too), the normal end first, before the test."""
        if self.closed:
            return None
        self.closed = True
        if self.window is not None:
            self.window.stop()
        self.monitor.stop()
        summary = self.monitor.summary()
        if self.window is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / constants.SYSTEM_METRICS_FILE).write_text(json.dumps({
                "summary": summary, "interval_s": self.monitor.interval, "samples": self.monitor.samples,
                "steps": {"data_seconds": self.monitor.data_seconds,
                          "compute_seconds": self.monitor.compute_seconds},
            }))
        log.info("System monitor: %d steps, %.0f%% of step time waiting for data, CPU %.0f%% on average",
                 summary["steps"], 100 * summary["data_wait_share"], summary.get("cpu_percent_mean", 0))
        return summary
