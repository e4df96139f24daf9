"""Profiler rules (profiler_rules.py): each rule on a crafted firing case and a passing case, the statistic
asserted; GPU rules say "not applicable" on CPU; and real jobs: a starved loader fires the data-loader rule
with a margin of at least 2, a healthy one passes it."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CLASSES, FlushRecorder, make_dataset, train_job
from image_classifier import constants
from image_classifier.metrics import PROFILER_RULE_METRICS, parse_metrics
from image_classifier.diagnostics.profiler_rules import (ALL_PROFILER_RULES, BatchSize, CPUBottleneck, Dataloader,
                                                         GPUMemoryIncrease, IOBottleneck, LoadBalancing,
                                                         LowGPUUtilization, MaxInitializationTime, ProfileData,
                                                         StepOutlier, margin, percentile, print_rule_metrics,
                                                         run_profiler_rules)


def gpu_samples(n, gpu=(90,), cpu=50, iowait=0.0, memory=(80,), memory_growth=0.0):
    """n monitor samples of a GPU job: utilisation per GPU, CPU %, I/O wait %, GPU memory % (growing by
    `memory_growth` points over the run: one number for every GPU, or one per GPU)."""
    growth = memory_growth if isinstance(memory_growth, tuple) else (memory_growth,) * len(memory)
    return [{"cpu_percent": cpu, "iowait_percent": iowait, "gpu_percent": list(gpu),
             "gpu_memory_percent": [m + g * i / n for m, g in zip(memory, growth)]} for i in range(n)]


def judge(rule, data, **parameters):
    return rule(**parameters).evaluate(data)


def test_dataloader_fires_on_waiting_and_passes_when_fed():
    starved = judge(Dataloader, ProfileData(data_seconds=[5, 0.3, 0.3, 0.3], compute_seconds=[0.1] * 4, workers=1,
                                            cpu_count=8))
    assert starved["status"] == "triggered" and starved["statistic"] == pytest.approx(75.0)
    assert starved["margin"] == pytest.approx(7.5) and "1 loader workers for 8 CPUs" in starved["finding"]
    fed = judge(Dataloader, ProfileData(data_seconds=[5, 0.01, 0.01], compute_seconds=[0.1] * 3, workers=8,
                                        cpu_count=8))
    assert fed["status"] == "passed" and fed["statistic"] == pytest.approx(100 / 11)  # the first step is skipped
    assert judge(Dataloader, ProfileData())["status"] == "no data"


# Two GPUs each: the firing and the passing case differ in one GPU only, so a rule that judged the wrong one
# (the best instead of the worst, or only the first) would pass or fire the other way.
@pytest.mark.parametrize("rule, firing, passing, statistic", [
    (CPUBottleneck, gpu_samples(10, gpu=(5, 5), cpu=95), gpu_samples(10, gpu=(5, 95), cpu=95), 100.0),
    (IOBottleneck, gpu_samples(10, gpu=(5, 5), iowait=80), gpu_samples(10, gpu=(5, 95), iowait=80), 100.0),
    (LowGPUUtilization, gpu_samples(10, gpu=(95, 30)), gpu_samples(10, gpu=(95, 90)), 30.0),
    (GPUMemoryIncrease, gpu_samples(40, memory=(20, 20), memory_growth=(0, 40)),
     gpu_samples(40, memory=(20, 20), memory_growth=(0, 4)), 30.0),
    (BatchSize, gpu_samples(10, gpu=(35, 35), cpu=35, memory=(35, 35)),
     gpu_samples(10, gpu=(35, 35), cpu=35, memory=(35, 90)), 50.0),
    (LoadBalancing, gpu_samples(10, gpu=(90, 20)), gpu_samples(10, gpu=(90, 80)), 1 - 20 / 90),
], ids=["cpu-bottleneck", "io-bottleneck", "low-gpu-utilization", "gpu-memory-increase", "batch-size",
        "load-balancing"])
def test_gpu_rule_fires_and_passes(rule, firing, passing, statistic):
    fired = judge(rule, ProfileData(device="cuda", samples=firing))
    assert fired["status"] == "triggered" and fired["margin"] > 1
    assert fired["statistic"] == pytest.approx(statistic, rel=0.02) and fired["finding"] and fired["recommendation"]
    passed = judge(rule, ProfileData(device="cuda", samples=passing))
    assert passed["status"] == "passed" and passed["margin"] < 1


@pytest.mark.parametrize("rule", [CPUBottleneck, IOBottleneck, LowGPUUtilization, GPUMemoryIncrease, BatchSize,
                                  LoadBalancing])
def test_gpu_rules_are_not_applicable_on_cpu(rule):
    result = judge(rule, ProfileData(device="cpu", samples=[{"cpu_percent": 100}] * 50))
    assert result["status"] == "not applicable" and result["finding"].startswith("not applicable on CPU")


def test_load_balancing_needs_two_gpus():
    result = judge(LoadBalancing, ProfileData(device="cuda", samples=gpu_samples(10, gpu=(10,))))
    assert result["status"] == "not applicable" and "one GPU" in result["finding"]


def test_step_outlier_counts_more_than_n_outliers():
    steady = [0.1] * 100
    spiky = steady[:70] + [1.0] * 3 + steady[73:]
    fired = judge(StepOutlier, ProfileData(compute_seconds=[5.0] + spiky), n_outliers=2)
    assert fired["status"] == "triggered" and fired["statistic"] > 3  # the 3rd slowest is an outlier too
    assert fired["finding"] == ("3 of 100 steps took more than 3 standard deviations above the mean 127.0 ms "
                                "(slowest 1000.0 ms)") and fired["datapoints"] == 100
    # n_outliers + 2 steps at least (after the first, skipped): 11 are too few for the default 10, 12 enough
    assert judge(StepOutlier, ProfileData(compute_seconds=[5.0] + [0.1] * 11))["status"] == "no data"
    assert judge(StepOutlier, ProfileData(compute_seconds=[5.0] + [0.1] * 12))["status"] == "passed"
    assert judge(StepOutlier, ProfileData(compute_seconds=[0.1, 0.1]), n_outliers=0)["status"] == "no data"
    # Exactly n_outliers slow steps do not fire: more than n_outliers must.
    boundary = judge(StepOutlier, ProfileData(compute_seconds=[5.0] + spiky), n_outliers=3)
    assert boundary["status"] == "passed" and boundary["statistic"] < 0
    # The same spikes under the default n_outliers (10): fewer than 11, so it passes.
    passed = judge(StepOutlier, ProfileData(compute_seconds=[5.0] + spiky))
    assert passed["status"] == "passed" and passed["statistic"] < 0


def test_results_have_the_debugger_rules_shape_word_for_word():
    finding = "the first training step started 25.00 minutes after the process"
    common = {"rule": "MaxInitializationTime", "metric": "rule_max_initialization_time", "threshold": 20.0,
              "description": MaxInitializationTime.description, "parameters": {"threshold": 20.0}}
    assert judge(MaxInitializationTime, ProfileData(init_seconds=25 * 60)) == {
        **common, "status": "triggered", "statistic": 25.0, "margin": 1.25, "datapoints": 1, "finding": finding,
        "recommendation": MaxInitializationTime.recommendation, "findings": [{"step": -1, "message": finding}]}
    assert judge(MaxInitializationTime, ProfileData(init_seconds=60)) == {
        **common, "status": "passed", "statistic": 1.0, "margin": 0.05, "datapoints": 1,
        "finding": "the first training step started 1.00 minutes after the process",
        "recommendation": MaxInitializationTime.recommendation, "findings": []}
    assert judge(MaxInitializationTime, ProfileData()) == {
        **common, "status": "no data", "statistic": None, "margin": None, "datapoints": 0,
        "finding": "not enough measurements to judge", "recommendation": MaxInitializationTime.recommendation,
        "findings": []}
    assert judge(CPUBottleneck, ProfileData(device="cpu")) == {
        "rule": "CPUBottleneck", "metric": "rule_cpu_bottleneck", "threshold": 50.0,
        "description": CPUBottleneck.description, "parameters": CPUBottleneck.defaults, "status": "not applicable",
        "statistic": None, "margin": None, "datapoints": 0, "recommendation": "", "findings": [],
        "finding": "not applicable on CPU: the job ran without a GPU"}
    one_gpu = judge(LoadBalancing, ProfileData(device="cuda", samples=[{"gpu_percent": [10]}] * 10))
    assert (one_gpu["status"], one_gpu["statistic"], one_gpu["margin"], one_gpu["datapoints"], one_gpu["finding"],
            one_gpu["recommendation"]) == ("not applicable", None, None, 10, "not applicable: one GPU", "")


def test_low_gpu_utilization_reports_fluctuating_use():
    samples = [{"cpu_percent": 50, "gpu_percent": [95 if i % 4 else 5]} for i in range(20)]
    result = judge(LowGPUUtilization, ProfileData(device="cuda", samples=samples))
    assert (result["status"], result["statistic"], result["datapoints"]) == ("passed", 95.0, 20)
    assert result["finding"] == "GPU 0 utilisation p95 95% (threshold 70%); GPU 0 fluctuates (p5 5%)"
    steady = judge(LowGPUUtilization, ProfileData(device="cuda", samples=gpu_samples(20, gpu=(95,))))
    assert steady["finding"] == "GPU 0 utilisation p95 95% (threshold 70%)"


def test_max_initialization_time():
    fired = judge(MaxInitializationTime, ProfileData(init_seconds=25 * 60))
    assert fired["status"] == "triggered" and fired["statistic"] == 25 and fired["margin"] == 1.25
    assert judge(MaxInitializationTime, ProfileData(init_seconds=60))["status"] == "passed"
    assert judge(MaxInitializationTime, ProfileData(init_seconds=60), threshold=0.5)["status"] == "triggered"


def test_sagemakers_documented_defaults():
    defaults = {r.__name__: r.defaults for r in ALL_PROFILER_RULES}
    assert defaults["CPUBottleneck"] == {"threshold": 50.0, "gpu_threshold": 10.0, "cpu_threshold": 90.0}
    assert defaults["IOBottleneck"] == {"threshold": 50.0, "gpu_threshold": 10.0, "io_threshold": 50.0}
    assert defaults["LowGPUUtilization"] == {"threshold_p95": 70.0, "threshold_p5": 10.0}
    assert defaults["GPUMemoryIncrease"]["increase"] == 5.0 and defaults["StepOutlier"]["stddev"] == 3.0
    assert defaults["MaxInitializationTime"] == {"threshold": 20.0} and defaults["LoadBalancing"] == {"threshold": 0.5}
    assert {k: defaults["BatchSize"][k] for k in ("cpu_threshold_p95", "gpu_threshold_p95",
                                                  "gpu_memory_threshold_p95")} == dict.fromkeys(
        ("cpu_threshold_p95", "gpu_threshold_p95", "gpu_memory_threshold_p95"), 70.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        Dataloader(treshold=5)


def test_parameters_reach_the_rules():
    data = ProfileData(data_seconds=[0, 0.2, 0.2], compute_seconds=[0.1] * 3)
    assert [r["status"] for r in run_profiler_rules(data, {"Dataloader": {"threshold": 90}})][:1] == ["passed"]
    assert [r["status"] for r in run_profiler_rules(data)][:1] == ["triggered"]


# ---- real jobs: the data-loader rule judges the job's own loader
def _large_jpegs(root, per_class=4, size=(4000, 3000)):
    """dogImages-style train/valid, with 12-megapixel grainy training JPEGs: draft decoding skips most of the
    inverse DCT but not the entropy decoding of every coefficient, so they starve a tiny model (small
    validation pictures keep the rest of the job quick)."""
    rng = np.random.default_rng(0)
    for split, count, (width, height) in (("train", per_class, size), ("valid", 2, (40, 30))):
        for folder in TINY_CLASSES:
            for i in range(count):
                grain = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
                path = root / split / folder / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(grain).save(path, quality=95)
    return root


def _dataloader_result(job):
    rules = json.loads((job.dir / "output" / "data" / constants.RULES_FILE).read_text())["profiler_rules"]
    return {r["rule"]: r for r in rules}["Dataloader"]


@pytest.mark.slow
def test_a_starved_loader_fires_the_dataloader_rule_and_a_fed_one_passes(tmp_path):
    # A tiny model: a ResNet-18 at 16 px training its head only; one loader process.
    hps = {"epochs": "2", "batch-size": "4", "debug-hook": "false", "workers": "0", "trainable-layers": "0"}
    starved, code = train_job(tmp_path / "s", dict(hps, **{"decode-cache": "off"}),
                              channels={"train": _large_jpegs(tmp_path / "big")}, name="starved")
    assert code == 0, starved.log_file.read_text()[-3000:]
    result = _dataloader_result(starved)
    assert result["status"] == "triggered" and result["margin"] >= 2 and result["statistic"] >= 20
    metrics = parse_metrics(starved.log_file.read_text().splitlines())
    assert metrics["rule_dataloader"] == [1.0] and set(PROFILER_RULE_METRICS) <= set(metrics)
    assert metrics["data_wait_share"][-1] > 0.2

    # fed: cached pictures, and a model with real work per step (the whole network trains); with the head
    # only at 16 px a step is so short that even cached pictures were 17 % of it on a loaded machine
    fed, code = train_job(tmp_path / "f", dict(hps, **{"decode-cache": "on", "trainable-layers": "4"}),
                          channels={"train": make_dataset(tmp_path / "small")}, name="fed")
    assert code == 0, fed.log_file.read_text()[-3000:]
    result = _dataloader_result(fed)
    assert result["status"] == "passed" and result["statistic"] < 10
    assert parse_metrics(fed.log_file.read_text().splitlines())["rule_dataloader"] == [0.0]
    assert "Decode cache on (decode-cache=on)" in fed.log_file.read_text()


def test_gpu_use_falls_back_to_nvidia_smi(tmp_path, monkeypatch):
    """Without NVML bindings in the image, the monitor asks nvidia-smi (here a stand-in on PATH)."""
    from image_classifier.diagnostics import profiling

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '37, 1000, 16000\\n85, 8000, 16000\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(profiling.torch.cuda, "utilization", lambda i: (_ for _ in ()).throw(ModuleNotFoundError("pynvml")))
    assert profiling._gpu_use(2) == {"gpu_percent": [37.0, 85.0], "gpu_memory_percent": [6.25, 50.0]}
    fake.unlink()
    assert profiling._gpu_use(2) == {}


def test_batch_size_names_each_resource_and_the_batch():
    data = ProfileData(device="cuda", samples=gpu_samples(10, gpu=(35, 20), cpu=35, memory=(30, 35)), batch_size=8)
    result = judge(BatchSize, data)
    assert (result["status"], result["statistic"], result["datapoints"]) == ("triggered", 50.0, 10)
    assert result["finding"] == ("p95: GPU utilisation 35% (threshold 70%), GPU memory 35% (threshold 70%), "
                                 "CPU 35% (threshold 70%) at batch-size 8")
    assert judge(BatchSize, ProfileData(device="cuda", samples=[{"cpu_percent": 10}]))["status"] == "no data"


def test_the_rules_file_holds_both_rule_sets_in_strict_json(tmp_path):
    from image_classifier.diagnostics.profiler_rules import write_rules_file

    out = tmp_path / "job" / "output" / "rules.json"  # folders made as needed
    debugger = [{"rule": "LossNotDecreasing", "statistic": float("inf"), "margin": float("-inf"), "datapoints": 3}]
    profiler = [judge(MaxInitializationTime, ProfileData(init_seconds=60))]
    write_rules_file(out, rules=debugger, profiler_rules=profiler, tensors=tmp_path / "tensors")
    assert json.loads(out.read_text()) == {
        "tensors": str(tmp_path / "tensors"), "profiler_rules": profiler,
        "rules": [{"rule": "LossNotDecreasing", "statistic": "inf", "margin": "-inf", "datapoints": 3}]}
    assert out.read_text().startswith('{\n "tensors"')  # indented for people to read
    write_rules_file(out)
    assert json.loads(out.read_text()) == {"tensors": None, "rules": []}  # no profiler rules ran: no key


# ---- exact statistics, thresholds met exactly (not past them), every GPU and every measurement
def test_margin_by_default_fires_above_and_percentile_interpolates_like_numpy():
    assert (margin(2.0, 1.0), margin(0.5, 1.0), margin(2.0, 1.0, fires_above=False)) == (2.0, 0.5, 0.5)
    values = [3.0, 0.0, 40.0, 10.0, 20.0, 30.0]
    for p in (0, 5, 37.5, 50, 95, 96, 100):
        assert percentile(values, p) == pytest.approx(float(np.percentile(values, p))), p
    assert percentile([], 50) is None


def test_step_outlier_at_its_threshold_and_on_steady_steps():
    # after the first step: one step of 6 s among four of 1 s is exactly 2 standard deviations above their mean
    at = judge(StepOutlier, ProfileData(compute_seconds=[9.0, 1, 1, 1, 1, 6]), stddev=2.0, n_outliers=0)
    assert (at["status"], at["statistic"], at["finding"]) == (
        "passed", 2.0, "0 of 5 steps took more than 2 standard deviations above the mean 2000.0 ms (slowest 6000.0 ms)")
    steady = judge(StepOutlier, ProfileData(compute_seconds=[9.0, 0.5, 0.5, 0.5]), n_outliers=0)  # 3: enough for 0
    assert (steady["status"], steady["statistic"], steady["datapoints"]) == ("passed", 0.0, 3)


@pytest.mark.parametrize("workers, cpus, note", [
    (1, 8, "; 1 loader workers for 8 CPUs (12% of them)"), (7, 10, ""), (20, 10, ""),  # 70 and 200 %: no note
    (24, 8, "; 24 loader workers oversubscribe 8 CPUs (300%)"), (4, 1, "; 4 loader workers oversubscribe 1 CPUs (400%)"),
], ids=["few", "at-min", "at-max", "oversubscribed", "one-cpu"])
def test_dataloader_judges_the_loader_workers_against_the_cpus(workers, cpus, note):
    result = judge(Dataloader, ProfileData(data_seconds=[5, 0.1, 0.1], compute_seconds=[1, 0.3, 0.3], workers=workers,
                                           cpu_count=cpus))
    assert result["finding"] == f"25.0% of step time waiting for data over 2 steps (threshold 10%){note}"


def test_cpu_and_io_bottleneck_count_samples_strictly_past_every_limit():
    samples = [{"cpu_percent": 95, "iowait_percent": 60, "gpu_percent": [5, 5]},  # past every limit: counts
               {"cpu_percent": 90, "iowait_percent": 50, "gpu_percent": [5, 5]},  # CPU and I/O wait at their limit
               {"cpu_percent": 95, "iowait_percent": 60, "gpu_percent": [10, 5]},  # one GPU at its limit
               {"cpu_percent": 95, "iowait_percent": None, "gpu_percent": [5, 5]},  # no I/O wait measured
               {"cpu_percent": 95}]  # no GPU use measured
    cpu = judge(CPUBottleneck, ProfileData(device="cuda", samples=samples))
    assert (cpu["status"], cpu["statistic"], cpu["datapoints"]) == ("passed", 50.0, 4)
    io = judge(IOBottleneck, ProfileData(device="cuda", samples=samples))
    assert (io["status"], io["statistic"], io["datapoints"]) == ("passed", 100 / 3, 3)


def test_low_gpu_utilization_percentiles_and_the_fluctuation_limits():
    def finding(values):
        result = judge(LowGPUUtilization, ProfileData(device="cuda", samples=[{"gpu_percent": [v]} for v in values]))
        return result["status"], result["statistic"], result["finding"]

    assert finding([5.0 * i for i in range(21)]) == (  # 0, 5, ... 100: p95 95, p5 5
        "passed", 95.0, "GPU 0 utilisation p95 95% (threshold 70%); GPU 0 fluctuates (p5 5%)")
    assert finding([0.0] * 2 + [70.0] * 19) == (  # p95 at the threshold: passes, and fluctuates
        "passed", 70.0, "GPU 0 utilisation p95 70% (threshold 70%); GPU 0 fluctuates (p5 0%)")
    assert finding([10.0] * 2 + [95.0] * 19) == ("passed", 95.0, "GPU 0 utilisation p95 95% (threshold 70%)")


def test_gpu_memory_increase_needs_two_windows_and_judges_the_gpu_that_grew():
    grows = gpu_samples(20, memory=(20, 20), memory_growth=(40, 0))  # exactly two windows; GPU 0 grows
    result = judge(GPUMemoryIncrease, ProfileData(device="cuda", samples=grows))
    assert (result["status"], result["statistic"]) == ("triggered", pytest.approx(20.0))
    assert result["finding"] == "GPU 0 memory use grew by 20.0 points of its memory over the run (threshold 5)"
    assert judge(GPUMemoryIncrease, ProfileData(device="cuda", samples=grows[:19]))["status"] == "no data"


def test_load_balancing_of_idle_and_nearly_idle_gpus():
    idle = judge(LoadBalancing, ProfileData(device="cuda", samples=gpu_samples(4, gpu=(0, 0))))
    assert (idle["status"], idle["statistic"]) == ("passed", 0.0)  # nothing used: nothing unbalanced
    faint = judge(LoadBalancing, ProfileData(device="cuda", samples=gpu_samples(4, gpu=(0.5, 0.125))))
    assert (faint["status"], faint["statistic"]) == ("triggered", 0.75)


def test_batch_size_takes_each_p95_and_needs_all_three_measurements():
    ramp = [{"cpu_percent": 3.0 * i + 2, "gpu_percent": [3.0 * i], "gpu_memory_percent": [3.0 * i + 1]}
            for i in range(21)]
    result = judge(BatchSize, ProfileData(device="cuda", samples=ramp, batch_size=16))
    assert (result["status"], result["statistic"]) == ("triggered", pytest.approx(100 * 59 / 70))
    assert result["finding"] == ("p95: GPU utilisation 57% (threshold 70%), GPU memory 58% (threshold 70%), "
                                 "CPU 59% (threshold 70%) at batch-size 16")
    for missing in ("cpu_percent", "gpu_percent", "gpu_memory_percent"):
        samples = [{key: value for key, value in sample.items() if key != missing} for sample in ramp]
        assert judge(BatchSize, ProfileData(device="cuda", samples=samples))["status"] == "no data", missing


def test_one_metric_line_per_rule_flushed_as_printed(monkeypatch):
    stdout = FlushRecorder()
    monkeypatch.setattr(sys, "stdout", stdout)
    print_rule_metrics(run_profiler_rules(ProfileData(data_seconds=[1, 1, 1], compute_seconds=[1, 0.1, 0.1],
                                                      init_seconds=30)))
    lines = stdout.getvalue().splitlines()
    assert parse_metrics(lines) == {  # triggered 1, passed 0, no data -1, not applicable -2
        "rule_dataloader": [1.0], "rule_cpu_bottleneck": [-2.0], "rule_io_bottleneck": [-2.0],
        "rule_low_gpu_utilization": [-2.0], "rule_gpu_memory_increase": [-2.0], "rule_step_outlier": [-1.0],
        "rule_batch_size": [-2.0], "rule_max_initialization_time": [0.0], "rule_load_balancing": [-2.0]}
    assert len(lines) == len(ALL_PROFILER_RULES)
    # each line flushed as it is printed: the job's log has it even if the process dies next
    assert stdout.flushed == ["\n".join(lines[:n]) + "\n" for n in range(1, len(lines) + 1)]


def test_the_rules_file_refuses_what_strict_json_cannot_hold(tmp_path):
    from image_classifier.diagnostics.profiler_rules import write_rules_file

    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_rules_file(tmp_path / "rules.json", rules=[{"rule": "A", "parameters": {"threshold": float("nan")}}])
