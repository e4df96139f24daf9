"""The debugging rules: each fires on a run crafted to go wrong its way and stays silent on a healthy one.

The crafted runs train a ResNet-18 at 16 px in this process through the job's own loop with the smdebug hook
on (tests/debug_runs.py); the rules then run over the saved tensors with smdebug's rule invoker.

Each crafted run goes wrong (or right) by a wide margin, not just past a threshold, so floating-point differences
between CPUs cannot flip a result: a rule that must fire went at least twice as far past its threshold as needed
(margin >= 2), and on a healthy run every rule stayed at most half-way to firing (margin <= 0.5).
`scripts/rules_matrix.sh` runs these tests under other thread counts, deterministic algorithms and CPU
instruction sets."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR
from debug_runs import DETERMINISTIC_ENV, THREADS_ENV, crafted_run, healthy_job
from image_classifier.metrics import RULE_METRICS, parse_metrics
from image_classifier.diagnostics.debugger_rules import ALL_RULES, ExplodingTensor, LossNotDecreasing, run_rules

MARGIN = 2.0  # how far past its threshold a rule that must fire has to go; its inverse bounds a healthy run

# name -> (crafted run, the rules it must trigger)
BAD_RUNS = {
    "diverging learning rate": (dict(lr=10.0, optimizer="sgd"), {"LossNotDecreasing", "ExplodingTensor"}),
    "frozen network": (dict(lr=1e-7, optimizer="sgd", trainable_layers=0), {"LossNotDecreasing"}),
    # Validation on the training pictures themselves, each labelled as another class: the better the model
    # learns the training labels, the worse its validation loss, by construction. Only the head trains, so the
    # frozen batch-norm statistics make the evaluation agree with training and both losses move steadily.
    "validation disagrees with training": (
        dict(epochs=10, trainable_layers=0, valid=(12, 12, 12), valid_seed=1, valid_labels={0: 1, 1: 2, 2: 0}),
        {"Overfit", "Overtraining"}),
    "labels carry no information": (dict(train=(12,), valid=(6,)), {"VanishingGradient"}),
    "weights initialised 100x too large": (dict(weight_scale=100.0), {"PoorWeightInitialization"}),
    "one class 30x rarer": (dict(train=(60, 2, 12)), {"ClassImbalance"}),
}


def statuses(results):
    return {r["rule"]: r["status"] for r in results}


# Only the head trains: the losses fall steadily. (With the whole network training, the batch-norm statistics
# lag the weights, and the validation loss of so tiny a run jumps around in ways that differ between CPUs.)
HEALTHY_RUN = dict(epochs=3, trainable_layers=0)


@pytest.fixture(scope="module")
def healthy_results(tmp_path_factory):
    return run_rules(crafted_run(tmp_path_factory.mktemp("healthy"), **HEALTHY_RUN))


def margins(results):
    return {r["rule"]: r["margin"] for r in results}


def test_healthy_run_triggers_no_rule(healthy_results):
    assert statuses(healthy_results) == {rule.__name__: "passed" for rule in ALL_RULES}
    near = {rule: margin for rule, margin in margins(healthy_results).items() if not margin <= 1 / MARGIN}
    assert not near, f"rules more than half-way to firing on the healthy run: {near}"
    for result, rule_class in zip(healthy_results, ALL_RULES):
        assert_statistic(result, rule_class, fired=False)


@pytest.mark.parametrize("case", BAD_RUNS)
def test_each_rule_fires_on_its_crafted_bad_run(case, tmp_path):
    run, expected = BAD_RUNS[case]
    results = run_rules(crafted_run(tmp_path, **run))
    triggered = {rule for rule, status in statuses(results).items() if status == "triggered"}
    assert expected <= triggered, f"{case}: {triggered}"
    slim = {rule: margin for rule, margin in margins(results).items() if rule in expected and not margin >= MARGIN}
    assert not slim, f"{case}: fired by less than {MARGIN}x its threshold: {slim}"
    for result, rule_class in zip(results, ALL_RULES):
        if rule_class.__name__ in expected:
            assert_statistic(result, rule_class, fired=True)
        if result["status"] == "triggered":
            assert result["findings"] and result["findings"][0]["message"]


def test_every_rule_is_covered_by_a_bad_run():
    covered = set().union(*(expected for _, expected in BAD_RUNS.values()))
    assert covered == {rule.__name__ for rule in ALL_RULES}


def rule_at(rule_class, statistic, threshold):
    """A rule holding a hand-set statistic and threshold (no trial: margin() reads only these)."""
    rule = rule_class.__new__(rule_class)
    rule.params = {**rule_class.defaults, rule_class.threshold_parameter: threshold}
    rule.statistic, rule.violations, rule.datapoints, rule.findings = statistic, 0, 1, []
    return rule


@pytest.mark.parametrize("statistic, threshold, margin", [
    (2e8, 1e8, 2.0), (5e7, 1e8, 0.5), (1e8, 1e8, 1.0), (0.0, 1e8, 0.0), (-3.0, 1e8, 0.0),
    (math.inf, 1e8, math.inf), (1.0, 0.0, math.inf), (0.0, 0.0, 1.0), (-1.0, 0.0, 0.0), (-1.0, -2.0, math.inf),
], ids=["twice-past", "half-way", "equal", "zero", "negative", "infinite", "past-zero-threshold",
        "at-zero-threshold", "below-zero-threshold", "negative-threshold"])
def test_margin_of_a_rule_that_fires_above_its_threshold(statistic, threshold, margin):
    assert ExplodingTensor.fires_above
    assert rule_at(ExplodingTensor, statistic, threshold).margin() == margin


@pytest.mark.parametrize("statistic, threshold, margin", [
    (0.05, 0.1, 2.0), (0.2, 0.1, 0.5), (0.1, 0.1, 1.0), (0.0, 0.1, math.inf), (-0.5, 0.1, math.inf),
    (-math.inf, 0.1, math.inf), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (-1.0, 0.0, math.inf),
], ids=["twice-past", "half-way", "equal", "zero", "negative", "minus-infinite", "above-zero-threshold",
        "at-zero-threshold", "below-zero-threshold"])
def test_margin_of_a_rule_that_fires_below_its_threshold(statistic, threshold, margin):
    """LossNotDecreasing fires when the loss fell by at most the threshold: the smaller the statistic, the
    further past; at or below 0 (the loss rose) it is infinitely far past any positive threshold."""
    assert not LossNotDecreasing.fires_above
    assert rule_at(LossNotDecreasing, statistic, threshold).margin() == margin


def test_margin_without_data_is_none():
    assert rule_at(ExplodingTensor, None, 1e8).margin() is None


def assert_statistic(result, rule_class, fired):
    """The result's own statistic went at least MARGIN times past its threshold (`fired`), or stayed at most
    1/MARGIN of the way to it, in the rule's direction; and the result's margin is margin() of those two."""
    statistic, threshold = result["statistic"], result["threshold"]
    assert statistic is not None and threshold == result["parameters"][rule_class.threshold_parameter], result
    past = statistic >= MARGIN * threshold if rule_class.fires_above else statistic <= threshold / MARGIN
    short = statistic <= threshold / MARGIN if rule_class.fires_above else statistic >= MARGIN * threshold
    assert past if fired else short, f"{rule_class.__name__}: statistic {statistic}, threshold {threshold}"
    assert result["margin"] == rule_at(rule_class, statistic, threshold).margin()


def test_rules_run_inside_the_training_job(tmp_path_factory):
    """The real job ran its rules: rules.json and one metric line per rule, parsed by METRIC_DEFINITIONS."""
    job = healthy_job(tmp_path_factory.getbasetemp() / "debug-jobs")
    report = json.loads((job.dir / "output" / "data" / "rules.json").read_text())
    assert [r["rule"] for r in report["rules"]] == [rule.__name__ for rule in ALL_RULES]
    assert all(r["status"] == "passed" for r in report["rules"]), report
    assert all(r["margin"] <= 1 / MARGIN for r in report["rules"]), report
    metrics = parse_metrics(job.log_file.read_text().splitlines())
    assert {name: metrics[name] for name in RULE_METRICS} == {name: [0.0] for name in RULE_METRICS}


def test_rules_command_runs_against_a_tensor_folder(tmp_path_factory, tmp_path, capsys):
    """What the launcher runs against a job's tensors (here a local folder)."""
    from image_classifier.diagnostics.debugger_rules import main

    job = healthy_job(tmp_path_factory.getbasetemp() / "debug-jobs")
    assert main([str(job.dir / "output" / "tensors"), "--out", str(tmp_path / "rules.json"), "--num-classes", "3"]) == 0
    assert len(json.loads((tmp_path / "rules.json").read_text())["rules"]) == len(ALL_RULES)
    assert "rule_overfit=0" in capsys.readouterr().out


# Another CPU, in this process's place: two threads, deterministic algorithms, and no SIMD at all in ATen's own
# kernels (ATEN_CPU_CAPABILITY=default), oneDNN and MKL held to SSE4: the furthest from this machine's AVX-512
# that any x86 CPU can be (scripts/rules_matrix.sh runs the whole matrix).
OTHER_CPU_SETTINGS = {THREADS_ENV: "2", DETERMINISTIC_ENV: "1", "ONEDNN_MAX_CPU_ISA": "SSE41",
                      "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"}


@pytest.mark.slow
def test_margins_hold_on_other_cpu_kernels():
    """The crafted runs (healthy and bad) again, in a fresh process whose kernels use no SIMD."""
    environment = {**os.environ, **OTHER_CPU_SETTINGS}
    capability = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                env=environment, capture_output=True, text=True, timeout=120)
    assert capability.stdout.strip() == "DEFAULT", capability.stdout + capability.stderr  # the setting took
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-k", "healthy_run or crafted"],
        cwd=PROJECT_DIR, env=environment, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"{1 + len(BAD_RUNS)} passed" in result.stdout


def test_missing_tensors_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved tensors"):
        run_rules(tmp_path / "nothing")


def test_unknown_rule_parameter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown parameter"):
        run_rules(
            crafted_run(tmp_path, epochs=1), rules=ALL_RULES[:1], parameters={"LossNotDecreasing": {"bogus": 1}})
