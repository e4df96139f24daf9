"""The debugging rules on real training jobs (toolkit `train`, hook on), not only on crafted in-process runs.

A healthy real job triggers no rule: test_rules.py::test_rules_run_inside_the_training_job. After a stop and
a resume the rules see the whole run: test_training_faults.py::test_stop_inside_an_epoch_then_resume_..."""
import json

import pytest

from conftest import train_job
from image_classifier import constants
from image_classifier.metrics import RULE_METRICS, parse_metrics
from image_classifier.diagnostics.debugger_rules import ALL_RULES

pytestmark = pytest.mark.slow

# An honest way to diverge: plain SGD with momentum at lr=10 (the top of the allowed range), 15 steps.
DIVERGING = {"lr": "10", "optimizer": "sgd", "momentum": "0.9", "lr-schedule": "constant", "epochs": "3",
             "debug-tensor-interval": "1"}
DIVERGENCE_RULES = {"ExplodingTensor": "rule_exploding_tensor", "LossNotDecreasing": "rule_loss_not_decreasing"}


def test_a_real_job_at_lr_10_fires_a_divergence_rule_and_its_metric_line(tmp_path):
    job, exit_code = train_job(tmp_path, DIVERGING, name="diverging")
    log = job.log_file.read_text()
    assert exit_code == 0, log[-3000:]  # the job ends; the rules diagnose it
    report = json.loads((job.dir / "output" / "data" / constants.RULES_FILE).read_text())
    status = {r["rule"]: r["status"] for r in report["rules"]}
    assert list(status) == [rule.__name__ for rule in ALL_RULES]
    fired = {rule for rule in DIVERGENCE_RULES if status[rule] == "triggered"}
    assert fired, status
    metrics = parse_metrics(log.splitlines())
    assert {name: len(metrics[name]) for name in RULE_METRICS} == {name: 1 for name in RULE_METRICS}
    for rule in fired:
        assert metrics[DIVERGENCE_RULES[rule]] == [1.0]
        finding = next(r for r in report["rules"] if r["rule"] == rule)["findings"][0]
        assert finding["message"] and f"Rule {rule} TRIGGERED" in log
