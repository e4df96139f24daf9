"""Profiler rules: SageMaker's ProfilerReport rules, rebuilt inside the job over what it measured itself.

AWS's framework profiling does not work from PyTorch 2.0 and its rule container is closed to new customers,
so these judge the job's own measurements (`ProfileData`: the system monitor's samples, each training
step's data-wait and compute time, the time to the first step). Each result has the shape of the Debugger
rules' (debugger_rules.py): the decisive statistic, the threshold it was compared with, the margin (how many times
past the threshold: above 1 fired), a status, a one-line finding and a recommendation. Thresholds are
parameters, with SageMaker's documented defaults where SageMaker has the rule.

Rules about the GPU say "not applicable" on a CPU job instead of passing. Statuses and their metric values
(`rule_*` lines, metrics.PROFILER_RULE_METRICS): triggered 1, passed 0, no data -1, not applicable -2.
"""
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..metrics import PROFILER_RULE_METRICS, format_metrics

STATUS_VALUES = {"triggered": 1, "passed": 0, "no data": -1, "not applicable": -2}


def margin(statistic, threshold, fires_above=True):
    """How many times past the threshold the statistic went (>= 1 fired); None without a statistic."""
    if statistic is None:
        return None
    high, low = (statistic, threshold) if fires_above else (threshold, statistic)
    if low <= 0:
        return math.inf if high > low else (1.0 if high == low else 0.0)
    return max(high / low, 0.0)


def percentile(values, p):
    """The p-th percentile (0-100) by linear interpolation, like numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * p / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ProfileData:
    """What the rules read. `samples`: the system monitor's rows (cpu_percent, iowait_percent, and on GPU
    gpu_percent / gpu_memory_percent lists, one value per visible GPU); `data_seconds` / `compute_seconds`:
    per training step; `init_seconds`: process start to the first training step."""
    device: str = "cpu"
    samples: list = field(default_factory=list)
    data_seconds: list = field(default_factory=list)
    compute_seconds: list = field(default_factory=list)
    init_seconds: float | None = None
    workers: int = 0
    cpu_count: int = 1
    batch_size: int = 0

    @property
    def cuda(self):
        return self.device == "cuda"

    def series(self, key):
        return [s[key] for s in self.samples if s.get(key) is not None]

    def per_gpu(self, key):
        """{gpu index: [values]} from samples whose `key` is a list (one value per GPU)."""
        out = {}
        for sample in self.samples:
            for index, value in enumerate(sample.get(key) or []):
                if value is not None:
                    out.setdefault(index, []).append(value)
        return out


class ProfilerRule:
    """Base: parameters with defaults; `evaluate(data)` returns the result dict (the Debugger rules' shape)."""

    metric = None  # its name in metrics.PROFILER_RULE_METRICS
    description = ""
    recommendation = ""
    defaults = {}
    threshold_parameter = None
    fires_above = True
    needs_gpu = False

    def __init__(self, **parameters):
        unknown = set(parameters) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        self.params = {**self.defaults, **parameters}

    @property
    def name(self):
        return type(self).__name__

    @property
    def threshold(self):
        return self.params[self.threshold_parameter]

    def evaluate(self, data):
        if self.needs_gpu and not data.cuda:
            return self._result("not applicable", None, 0, "not applicable on CPU: the job ran without a GPU")
        measured = self.measure(data)
        if measured is None:
            return self._result("no data", None, 0, "not enough measurements to judge")
        statistic, datapoints, finding = measured
        if statistic is None:  # the finding says why it does not apply (one GPU for load balancing)
            return self._result("not applicable", None, datapoints, finding)
        fired = statistic > self.threshold if self.fires_above else statistic < self.threshold
        return self._result("triggered" if fired else "passed", statistic, datapoints, finding)

    def _result(self, status, statistic, datapoints, finding):
        return {"rule": self.name, "metric": self.metric, "status": status, "statistic": statistic,
                "threshold": self.threshold, "margin": margin(statistic, self.threshold, self.fires_above),
                "datapoints": datapoints, "description": self.description, "parameters": self.params,
                "finding": finding,
                "recommendation": "" if status == "not applicable" else self.recommendation,  # nothing to act on
                "findings": [{"step": -1, "message": finding}] if status == "triggered" else []}

    def measure(self, data):
        """(statistic, datapoints, one-line finding), or None without data; a statistic of None: the rule does
        not apply, and the finding says why."""
        raise NotImplementedError


class Dataloader(ProfilerRule):
    metric = "rule_dataloader"
    description = ("Share of training step time spent waiting for the data loader (%); also checks the loader "
                   "workers against the CPU count (SageMaker's Dataloader: min_threshold / max_threshold %).")
    recommendation = ("Feed the model faster: decode-cache=on (decode each picture once), more loader workers "
                      "(workers), a larger instance with more vCPUs per GPU, or smaller pictures in the channel.")
    defaults = {"threshold": 10.0, "min_threshold": 70.0, "max_threshold": 200.0, "skip_first": 1}
    threshold_parameter = "threshold"

    def measure(self, data):
        skip = self.params["skip_first"]
        waited, computed = data.data_seconds[skip:], data.compute_seconds[skip:]
        if not waited:
            return None
        share = 100 * sum(waited) / max(sum(waited) + sum(computed), 1e-12)
        workers = 100 * data.workers / max(data.cpu_count, 1)
        note = ""
        if workers < self.params["min_threshold"]:
            note = f"; {data.workers} loader workers for {data.cpu_count} CPUs ({workers:.0f}% of them)"
        elif workers > self.params["max_threshold"]:
            note = f"; {data.workers} loader workers oversubscribe {data.cpu_count} CPUs ({workers:.0f}%)"
        return share, len(waited), (f"{share:.1f}% of step time waiting for data over {len(waited)} steps "
                                    f"(threshold {self.threshold:g}%){note}")


class CPUBottleneck(ProfilerRule):
    metric = "rule_cpu_bottleneck"
    description = ("Share of the time (%) the CPU was above cpu_threshold % while the GPU was below "
                   "gpu_threshold %.")
    recommendation = ("Move work off the CPU: decode-cache=on, more loader workers, or an instance with more "
                      "vCPUs per GPU.")
    defaults = {"threshold": 50.0, "gpu_threshold": 10.0, "cpu_threshold": 90.0}
    threshold_parameter = "threshold"
    needs_gpu = True

    def measure(self, data):
        rows = [s for s in data.samples if s.get("gpu_percent")]
        if not rows:
            return None
        bottlenecked = sum(s["cpu_percent"] > self.params["cpu_threshold"]
                           and max(s["gpu_percent"]) < self.params["gpu_threshold"] for s in rows)
        share = 100 * bottlenecked / len(rows)
        return share, len(rows), (f"CPU above {self.params['cpu_threshold']:g}% with the GPU below "
                                  f"{self.params['gpu_threshold']:g}% in {share:.1f}% of {len(rows)} samples")


class IOBottleneck(ProfilerRule):
    metric = "rule_io_bottleneck"
    description = ("Share of the time (%) the CPUs waited on I/O above io_threshold % while the GPU was below "
                   "gpu_threshold %.")
    recommendation = ("Read less from disk while training: decode-cache=on keeps the decoded pictures in memory; "
                      "FastFile or a local copy of the channel instead of a slow mount.")
    defaults = {"threshold": 50.0, "gpu_threshold": 10.0, "io_threshold": 50.0}
    threshold_parameter = "threshold"
    needs_gpu = True

    def measure(self, data):
        rows = [s for s in data.samples if s.get("gpu_percent") and s.get("iowait_percent") is not None]
        if not rows:
            return None
        waiting = sum(s["iowait_percent"] > self.params["io_threshold"]
                      and max(s["gpu_percent"]) < self.params["gpu_threshold"] for s in rows)
        share = 100 * waiting / len(rows)
        return share, len(rows), (f"I/O wait above {self.params['io_threshold']:g}% with the GPU below "
                                  f"{self.params['gpu_threshold']:g}% in {share:.1f}% of {len(rows)} samples")


class LowGPUUtilization(ProfilerRule):
    metric = "rule_low_gpu_utilization"
    description = ("The 95th percentile of GPU utilisation (%) is below threshold_p95 (the GPU is underused); "
                   "a 5th percentile below threshold_p5 with a high p95 is reported as fluctuating use.")
    recommendation = ("Give the GPU more work per step (a larger batch-size) or feed it faster (decode-cache=on, "
                      "more workers); or use a smaller instance.")
    defaults = {"threshold_p95": 70.0, "threshold_p5": 10.0}
    threshold_parameter, fires_above = "threshold_p95", False
    needs_gpu = True

    def measure(self, data):
        per_gpu = data.per_gpu("gpu_percent")
        if not per_gpu:
            return None
        p95 = {i: percentile(v, 95) for i, v in per_gpu.items()}
        p5 = {i: percentile(v, 5) for i, v in per_gpu.items()}
        worst = min(p95, key=p95.get)
        fluctuating = [i for i in p95 if p95[i] >= self.threshold and p5[i] < self.params["threshold_p5"]]
        note = f"; GPU {fluctuating[0]} fluctuates (p5 {p5[fluctuating[0]]:.0f}%)" if fluctuating else ""
        return p95[worst], sum(map(len, per_gpu.values())), (
            f"GPU {worst} utilisation p95 {p95[worst]:.0f}% (threshold {self.threshold:g}%){note}")


class GPUMemoryIncrease(ProfilerRule):
    metric = "rule_gpu_memory_increase"
    description = ("Growth of GPU memory use (percentage points of the GPU's memory) from the mean of the first "
                   "`window` samples to the mean of the last `window`.")
    recommendation = ("Memory that keeps growing is a leak: tensors kept across steps (a loss kept with its "
                      "graph, lists of outputs); check with torch.cuda.memory_summary().")
    defaults = {"increase": 5.0, "window": 10}
    threshold_parameter = "increase"
    needs_gpu = True

    def measure(self, data):
        per_gpu = data.per_gpu("gpu_memory_percent")
        window = self.params["window"]
        growth = {i: statistics.fmean(v[-window:]) - statistics.fmean(v[:window])
                  for i, v in per_gpu.items() if len(v) >= 2 * window}
        if not growth:
            return None
        worst = max(growth, key=growth.get)
        return growth[worst], sum(map(len, per_gpu.values())), (
            f"GPU {worst} memory use grew by {growth[worst]:.1f} points of its memory over the run "
            f"(threshold {self.threshold:g})")


class StepOutlier(ProfilerRule):
    metric = "rule_step_outlier"
    description = ("Training steps whose compute time is more than `stddev` standard deviations above the mean; "
                   "fires when there are more than `n_outliers` of them (statistic: the z-score of the "
                   "(n_outliers + 1)-th slowest step).")
    recommendation = ("Look for what stalls some steps: the profiler trace (profile=true) around them, other "
                      "processes on the host, host-to-device copies or a checkpoint written inside the loop.")
    defaults = {"stddev": 3.0, "n_outliers": 10, "skip_first": 1}
    threshold_parameter = "stddev"

    def measure(self, data):
        times = data.compute_seconds[self.params["skip_first"]:]
        if len(times) < max(self.params["n_outliers"] + 2, 3):
            return None
        mean, spread = statistics.fmean(times), statistics.pstdev(times)
        z = sorted(((t - mean) / spread if spread > 0 else 0.0 for t in times), reverse=True)
        statistic = z[self.params["n_outliers"]]
        outliers = sum(v > self.threshold for v in z)
        return statistic, len(times), (f"{outliers} of {len(times)} steps took more than {self.threshold:g} standard "
                                       f"deviations above the mean {mean * 1000:.1f} ms (slowest "
                                       f"{max(times) * 1000:.1f} ms)")


class BatchSize(ProfilerRule):
    metric = "rule_batch_size"
    description = ("GPU utilisation, GPU memory and CPU use all have their 95th percentile below their thresholds "
                   "(statistic: the highest of the three p95s as % of its threshold; fires below 100).")
    recommendation = "The instance is underused: raise batch-size (and lr with it), or use a smaller instance."
    defaults = {"cpu_threshold_p95": 70.0, "gpu_threshold_p95": 70.0, "gpu_memory_threshold_p95": 70.0,
                "threshold": 100.0}
    threshold_parameter, fires_above = "threshold", False
    needs_gpu = True

    def measure(self, data):
        gpu, memory, cpu = (data.per_gpu("gpu_percent"), data.per_gpu("gpu_memory_percent"),
                            data.series("cpu_percent"))
        if not gpu or not memory or not cpu:
            return None
        use = {"GPU utilisation": (max(percentile(v, 95) for v in gpu.values()), self.params["gpu_threshold_p95"]),
               "GPU memory": (max(percentile(v, 95) for v in memory.values()), self.params["gpu_memory_threshold_p95"]),
               "CPU": (percentile(cpu, 95), self.params["cpu_threshold_p95"])}
        statistic = max(100 * p95 / limit for p95, limit in use.values())
        return statistic, len(cpu), "p95: " + ", ".join(f"{k} {p95:.0f}% (threshold {limit:g}%)"
                                                        for k, (p95, limit) in use.items()) + \
            f" at batch-size {data.batch_size}"


class MaxInitializationTime(ProfilerRule):
    metric = "rule_max_initialization_time"
    description = "Minutes from the start of the training process to its first training step."
    recommendation = ("Start faster: FastFile input mode instead of File for large channels, fewer pictures "
                      "checked at start, or pretrained weights in a `pretrained` channel instead of a download.")
    defaults = {"threshold": 20.0}
    threshold_parameter = "threshold"

    def measure(self, data):
        if data.init_seconds is None:
            return None
        minutes = data.init_seconds / 60
        return minutes, 1, f"the first training step started {minutes:.2f} minutes after the process"


class LoadBalancing(ProfilerRule):
    metric = "rule_load_balancing"
    description = "1 - (mean utilisation of the least used GPU / of the most used one), over every visible GPU."
    recommendation = ("Balance the work: equal shards per GPU (the job's sampler does this), the same batch-size "
                      "on each, and no other process on one GPU.")
    defaults = {"threshold": 0.5}
    threshold_parameter = "threshold"
    needs_gpu = True

    def measure(self, data):
        per_gpu = data.per_gpu("gpu_percent")
        if not per_gpu:
            return None
        if len(per_gpu) < 2:
            return None, sum(map(len, per_gpu.values())), "not applicable: one GPU"
        means = {i: statistics.fmean(v) for i, v in per_gpu.items()}
        most, least = max(means, key=means.get), min(means, key=means.get)
        imbalance = 1 - means[least] / means[most] if means[most] > 0 else 0.0
        return imbalance, sum(map(len, per_gpu.values())), (
            f"GPU {least} {means[least]:.0f}% busy on average, GPU {most} {means[most]:.0f}% "
            f"(imbalance {imbalance:.2f}, threshold {self.threshold:g})")


ALL_PROFILER_RULES = (Dataloader, CPUBottleneck, IOBottleneck, LowGPUUtilization, GPUMemoryIncrease, StepOutlier,
                      BatchSize, MaxInitializationTime, LoadBalancing)
assert tuple(r.metric for r in ALL_PROFILER_RULES) == PROFILER_RULE_METRICS  # one list, one set of metric names


def run_profiler_rules(data, parameters=None, rules=ALL_PROFILER_RULES):
    """Every rule's result over `data`, in order. `parameters`: {rule name: {parameter: value}}."""
    parameters = parameters or {}
    return [rule(**parameters.get(rule.__name__, {})).evaluate(data) for rule in rules]


def print_rule_metrics(results):
    """One metric line per rule (STATUS_VALUES)."""
    for result in results:
        print(format_metrics(**{result["metric"]: STATUS_VALUES[result["status"]]}), flush=True)


def strict_json(results):
    """Infinite statistics or margins as the strings "inf" / "-inf" (strict JSON has no infinity)."""
    return [{key: str(value) if isinstance(value, float) and not math.isfinite(value) else value
             for key, value in result.items()} for result in results]


def write_rules_file(out_file, rules=None, profiler_rules=None, tensors=None):
    """rules.json: the Debugger rules (over the saved tensors) and the profiler rules, whichever ran."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    content = {"tensors": str(tensors) if tensors else None, "rules": strict_json(rules or [])}
    if profiler_rules is not None:
        content["profiler_rules"] = strict_json(profiler_rules)
    out_file.write_text(json.dumps(content, indent=1,
                                   allow_nan=False))  # pragma: no mutate - allow_nan=None is as false
