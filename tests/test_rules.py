"""The debugging rules: each fires on a run crafted to go wrong its way and stays silent on a healthy one.

The crafted runs train a ResNet-18 at 16 px in this process through the job's own loop with the smdebug hook
on (tests/debug_runs.py); the rules then run over the saved tensors with smdebug's rule invoker."""
import json

import pytest

from debug_runs import crafted_run, healthy_job
from image_classifier.metrics import RULE_METRICS, parse_metrics
from image_classifier.rules import ALL_RULES, run_rules

# name -> (crafted run, the rules it must trigger)
BAD_RUNS = {
    "diverging learning rate": (dict(lr=10.0, optimizer="sgd"), {"LossNotDecreasing", "ExplodingTensor"}),
    "frozen network": (dict(lr=1e-7, optimizer="sgd", trainable_layers=0), {"LossNotDecreasing"}),
    "validation disagrees with training": (dict(epochs=5, valid_labels={0: 1, 1: 2, 2: 0}),
                                           {"Overfit", "Overtraining"}),
    "labels carry no information": (dict(train=(12,), valid=(6,)), {"VanishingGradient"}),
    "weights initialised 100x too large": (dict(weight_scale=100.0), {"PoorWeightInitialization"}),
    "one class 20x rarer": (dict(train=(40, 2, 12)), {"ClassImbalance"}),
}


def statuses(results):
    return {r["rule"]: r["status"] for r in results}


@pytest.fixture(scope="module")
def healthy_results(tmp_path_factory):
    return run_rules(crafted_run(tmp_path_factory.mktemp("healthy"), epochs=3))


def test_healthy_run_triggers_no_rule(healthy_results):
    assert statuses(healthy_results) == {rule.__name__: "passed" for rule in ALL_RULES}


@pytest.mark.parametrize("case", BAD_RUNS)
def test_each_rule_fires_on_its_crafted_bad_run(case, tmp_path):
    run, expected = BAD_RUNS[case]
    results = run_rules(crafted_run(tmp_path, **run))
    triggered = {rule for rule, status in statuses(results).items() if status == "triggered"}
    assert expected <= triggered, f"{case}: {triggered}"
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
    metrics = parse_metrics(job.log_file.read_text().splitlines())
    assert {name: metrics[name] for name in RULE_METRICS} == {name: [0.0] for name in RULE_METRICS}


def test_rules_command_runs_against_a_tensor_folder(tmp_path_factory, tmp_path, capsys):
    """What the launcher runs against a job's tensors (here a local folder)."""
    from image_classifier.rules import main

    job = healthy_job(tmp_path_factory.getbasetemp() / "debug-jobs")
    assert main([str(job.dir / "output" / "tensors"), "--out", str(tmp_path / "rules.json"), "--num-classes", "3"]) == 0
    assert len(json.loads((tmp_path / "rules.json").read_text())["rules"]) == len(ALL_RULES)
    assert "rule_overfit=0" in capsys.readouterr().out


def test_missing_tensors_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved tensors"):
        run_rules(tmp_path / "nothing")


def test_unknown_rule_parameter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown parameter"):
        run_rules(
            crafted_run(tmp_path, epochs=1), rules=ALL_RULES[:1], parameters={"LossNotDecreasing": {"bogus": 1}})
