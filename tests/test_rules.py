"""The debugging rules: each fires on a run crafted to go wrong its way and stays silent on a healthy one.

The crafted runs train a ResNet-18 at 16 px in this process through the job's own loop with the smdebug hook
on (tests/debug_runs.py); the rules then run over the saved tensors with smdebug's rule invoker.

Each crafted run goes wrong (or right) by a wide margin, not just past a threshold, so floating-point differences
between CPUs cannot flip a result: a rule that must fire went at least twice as far past its threshold as needed
(margin >= 2), and on a healthy run every rule stayed at most half-way to firing (margin <= 0.5).
`scripts/rules_matrix.sh` runs these tests under other thread counts, deterministic algorithms and CPU
instruction sets."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from debug_runs import DETERMINISTIC_ENV, THREADS_ENV, crafted_run, healthy_job
from image_classifier.metrics import RULE_METRICS, parse_metrics
from image_classifier.rules import ALL_RULES, run_rules

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


@pytest.mark.parametrize("case", BAD_RUNS)
def test_each_rule_fires_on_its_crafted_bad_run(case, tmp_path):
    run, expected = BAD_RUNS[case]
    results = run_rules(crafted_run(tmp_path, **run))
    triggered = {rule for rule, status in statuses(results).items() if status == "triggered"}
    assert expected <= triggered, f"{case}: {triggered}"
    slim = {rule: margin for rule, margin in margins(results).items() if rule in expected and not margin >= MARGIN}
    assert not slim, f"{case}: fired by less than {MARGIN}x its threshold: {slim}"
    for result in results:
        if result["status"] == "triggered":
            assert result["findings"] and result["findings"][0]["message"]


def test_every_rule_is_covered_by_a_bad_run():
    covered = set().union(*(expected for _, expected in BAD_RUNS.values()))
    assert covered == {rule.__name__ for rule in ALL_RULES}


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
    from image_classifier.rules import main

    job = healthy_job(tmp_path_factory.getbasetemp() / "debug-jobs")
    assert main([str(job.dir / "output" / "tensors"), "--out", str(tmp_path / "rules.json"), "--num-classes", "3"]) == 0
    assert len(json.loads((tmp_path / "rules.json").read_text())["rules"]) == len(ALL_RULES)
    assert "rule_overfit=0" in capsys.readouterr().out


# Another CPU, in this process's place: two threads, deterministic algorithms, and oneDNN, MKL and ATen's own
# kernels held to AVX2 (scripts/rules_matrix.sh runs the whole matrix).
OTHER_CPU_SETTINGS = {THREADS_ENV: "2", DETERMINISTIC_ENV: "1", "ONEDNN_MAX_CPU_ISA": "AVX2",
                      "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@pytest.mark.slow
def test_margins_hold_on_other_cpu_kernels():
    """The crafted runs (healthy and bad) again, in a fresh process whose kernels differ from this one's."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "healthy_run or crafted"],
        cwd=Path(__file__).parent.parent, env={**os.environ, **OTHER_CPU_SETTINGS}, capture_output=True, text=True,
        timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"{1 + len(BAD_RUNS)} passed" in result.stdout


def test_missing_tensors_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved tensors"):
        run_rules(tmp_path / "nothing")


def test_unknown_rule_parameter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown parameter"):
        run_rules(
            crafted_run(tmp_path, epochs=1), rules=ALL_RULES[:1], parameters={"LossNotDecreasing": {"bogus": 1}})
