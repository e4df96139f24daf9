"""The debugging rules (debugger_rules.py) over small runs the tests write as smdebug's hook does (event files,
index, collections, end mark), with every value set by hand: each rule's statistic, datapoints, findings and
verdict are asserted exactly, at and either side of its threshold, on non-finite values and on missing data.

smdebug's own `invoke_rule(..., raise_eval_cond=True)` is the rule's verdict as smdebug sees it: a rule reports
the condition met exactly at the steps of its findings. These run in about a second (no model trains); the
crafted training runs of test_debugger_rules.py show the same rules firing on real training."""
import json
import logging
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FlushRecorder
from image_classifier.diagnostics import debugger_hook, debugger_rules
from image_classifier.diagnostics.debugger_rules import (ALL_RULES, ClassImbalance, ExplodingTensor, LossNotDecreasing,
                                                         Overfit, Overtraining, PoorWeightInitialization,
                                                         VanishingGradient, main, report_rules, run_rules)
from image_classifier.metrics import parse_metrics

from smdebug.core.access_layer.utils import training_has_ended  # noqa: E402 - after debugger_rules (log level)
from smdebug.core.modes import ModeKeys  # noqa: E402
from smdebug.core.writer import FileWriter  # noqa: E402
from smdebug.exceptions import RuleEvaluationConditionMet  # noqa: E402
from smdebug.pytorch.collection import CollectionManager  # noqa: E402
from smdebug.rules.rule_invoker import invoke_rule  # noqa: E402
from smdebug.trials import create_trial  # noqa: E402

TRAIN, EVAL, PREDICT = ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT
LOSS, LABELS = "CrossEntropyLoss_output_0", debugger_hook.LABELS_REGEX  # the names the job's hook saves them under


@pytest.fixture(autouse=True)
def no_refresh_delay(monkeypatch):
    """smdebug waits a second for files still on their way before it reads an ended run; these are all written."""
    monkeypatch.setenv("SMDEBUG_TRAINING_END_DELAY_REFRESH", "0")


def save_trial(folder, steps, ended=True):
    """Write `steps` (one per global step: (mode, {name: (collections, value)}), or None for a step that saved
    nothing) as the hook does; float values as float32 (the model's tensors), integer ones as int64 (the labels).
    `ended`: the end-of-training mark."""
    debugger_hook.install_numpy_compat()
    manager, mode_steps = CollectionManager(), {}
    for step, saved in enumerate(steps):
        if saved is None:
            continue
        mode, tensors = saved
        mode_steps[mode] = mode_steps.get(mode, -1) + 1
        writer = FileWriter(trial_dir=str(folder), worker="worker_0", step=step)
        for name, (collections, value) in tensors.items():
            value = np.asarray(value)
            value = value.astype(np.int64 if value.dtype.kind in "iu" else np.float32)
            writer.write_tensor(tdata=value, tname=name, mode=mode, mode_step=mode_steps[mode])
            for collection in collections.split():
                manager.get(collection, create=True).add_tensor_name(name)
        writer.close()
    manager.export(str(folder), "worker_0_collections.json")
    if ended:
        training_has_ended(str(folder))
    return Path(folder)


def judge(rule_class, folder, **parameters):
    """(the rule's result, the steps smdebug's invoker saw its condition met at)."""
    trial = create_trial(str(folder))
    steps = trial.steps()
    rule = rule_class(trial, last_step=steps[-1], **parameters)
    met = []
    for step in steps:
        try:
            invoke_rule(rule, start_step=step, end_step=step + 1, raise_eval_cond=True)
        except RuleEvaluationConditionMet:
            met.append(step)
    result = rule.result()
    assert met == [finding["step"] for finding in result["findings"]], (met, result["findings"])
    return result


def losses(*epochs, test=None):
    """Steps of a run: per epoch (train losses, valid losses), a training pass then a validation pass; `test`:
    the losses of a test pass at the end."""
    passes = [(mode, values) for train, valid in epochs for mode, values in ((TRAIN, train), (EVAL, valid))]
    passes += [(PREDICT, test)] if test else []
    return [(mode, {LOSS: ("losses", value)}) for mode, values in passes for value in values]


def epochs(*pairs, steps=2):
    """Epochs whose passes each hold `steps` equal losses: (train, valid) per epoch."""
    return losses(*(([train] * steps, [valid] * steps) for train, valid in pairs))


def outcome(result):
    return result["status"], result["statistic"], result["datapoints"], [f["message"] for f in result["findings"]]


def test_a_rule_keeps_its_statistic_at_its_worst_in_its_direction(tmp_path):
    """measure(): the statistic nearest to firing, or furthest past, so far; NaN is the worst value there is."""
    trial = create_trial(str(save_trial(tmp_path, [])))
    above, below = ExplodingTensor(trial), LossNotDecreasing(trial)  # fires above / below its threshold
    assert [above.measure(v) for v in (0.5, 0.25, 0.75, 0.5)] == [0.5, 0.25, 0.75, 0.5] and above.statistic == 0.75
    assert [below.measure(v) for v in (0.5, 0.25, 0.75)] == [0.5, 0.25, 0.75] and below.statistic == 0.25
    assert (above.measure(math.nan), below.measure(math.nan)) == (math.inf, -math.inf)
    assert (above.statistic, below.statistic) == (math.inf, -math.inf)


# ------------------------------------------------------------------------------------ loss not decreasing
@pytest.mark.parametrize("train, parameters, expected", [
    ([2.0] * 4 + [1.875] * 2, {}, ("triggered", 0.0625, 6, [
        "train loss 2.0000 over the first 2 saved steps and 1.8750 over the last 2: not 10% lower"])),
    ([0.5, 0.5, 0.375, 0.375, 0.25, 0.25], {}, ("passed", 0.5, 6, [])),  # a loss below 1 falls by half
    ([2.0, 2.0, 1.75, 1.5, 1.5, 1.5], {"min_relative_decrease": 0.25}, ("triggered", 0.25, 6, [
        "train loss 2.0000 over the first 2 saved steps and 1.5000 over the last 2: not 25% lower"])),  # at it
    ([2.0, 1.75, 1.5], {"min_steps": 3}, ("passed", 0.25, 3, [])),  # a third of 3 steps: one step each
    ([0.0] * 6, {}, ("triggered", -math.inf, 6, [
        "train loss 0.0000 over the first 2 saved steps and 0.0000 over the last 2: not 10% lower"])),
    ([math.inf] * 2 + [1.0] * 4, {}, ("triggered", -math.inf, 6, [
        "train loss inf over the first 2 saved steps and 1.0000 over the last 2: not 10% lower"])),
    ([1.0] * 4 + [math.nan] * 2, {}, ("triggered", -math.inf, 6, [
        "train loss 1.0000 over the first 2 saved steps and nan over the last 2: not 10% lower"])),
], ids=["fell-too-little", "fell-by-half", "at-the-threshold", "fewer-steps-asked", "zero", "infinite-start",
        "nan-end"])
def test_loss_not_decreasing(tmp_path, train, parameters, expected):
    valid = [9.0] * len(train)  # validation losses do not count
    assert outcome(judge(LossNotDecreasing, save_trial(tmp_path, losses((train, valid))), **parameters)) == expected


def test_the_loss_is_the_loss_modules_output_not_another_layers(tmp_path):
    """A layer output saved too, named before the loss (a model whose class name sorts first): not the loss."""
    steps = [(mode, {**tensors, "AlexNet_output_0": ("outputs", [[9.0, 9.0]])}) for mode, tensors in
             losses(([2.0] * 4 + [1.875] * 2, [1.0]))]
    assert outcome(judge(LossNotDecreasing, save_trial(tmp_path, steps)))[:2] == ("triggered", 0.0625)


def test_loss_not_decreasing_needs_min_steps_training_losses(tmp_path):
    few = save_trial(tmp_path / "few", losses(([2.0] * 5, [1.0] * 9)))
    assert outcome(judge(LossNotDecreasing, few)) == ("no data", None, 0, [])


def test_the_loss_rules_decide_at_the_last_step_even_without_a_loss_there(tmp_path):
    """A last step that saved weights only (the loss is saved on its own interval): the rules still decide."""
    steps = epochs((2.0, 1.0), (1.5, 1.25), (1.0, 1.5)) + [(TRAIN, {"fc.weight": ("weights", np.ones((2, 2)))})]
    folder = save_trial(tmp_path, steps)
    fired = judge(Overfit, folder, patience=2)
    assert (fired["status"], fired["findings"][0]["step"]) == ("triggered", len(steps) - 1)
    assert outcome(judge(LossNotDecreasing, folder)) == ("passed", 0.5, 6, [])


# ------------------------------------------------------------------------------------ overfit
@pytest.mark.parametrize("pairs, parameters, expected", [
    # the strongest 2-epoch window is epochs 1-3: the finding names where it ended
    ([(4.0, 1.0), (3.0, 1.0), (2.0, 1.5), (1.0, 3.0), (0.5, 3.0)], {}, ("triggered", 1 / 3, 5, [
        "valid loss rose and train loss fell by at least 33.3% an epoch for 2 epochs in a row (to train 1.0000, "
        "valid 3.0000)"])),
    ([(2.0, 1.0), (1.5, 1.25), (1.0, 1.5)], {}, ("triggered", 0.2, 3, [
        "valid loss rose and train loss fell by at least 20.0% an epoch for 2 epochs in a row (to train 1.0000, "
        "valid 1.5000)"])),
    ([(0.5, 0.25), (0.375, 0.3125), (0.25, 0.375)], {}, ("triggered", 0.2, 3, [
        "valid loss rose and train loss fell by at least 20.0% an epoch for 2 epochs in a row (to train 0.2500, "
        "valid 0.3750)"])),
    # the last change alone is the strongest, but a window is `patience` changes
    ([(2.0, 1.0), (1.5, 1.25), (1.25, 1.5), (0.625, 3.0)], {}, ("triggered", 1 / 6, 4, [
        "valid loss rose and train loss fell by at least 16.7% an epoch for 2 epochs in a row (to train 1.2500, "
        "valid 1.5000)"])),
    ([(2.0, 1.0), (1.5, 1.25)], {"patience": 1, "min_relative_change": 0.25}, ("passed", 0.25, 2, [])),  # at it
    ([(2.0, 2.0), (1.0, 1.0), (0.5, 0.5)], {}, ("passed", -0.5, 3, [])),  # both fall: no overfit
    ([(2.0, 0.0), (1.0, 1.0), (0.5, 2.0)], {}, ("passed", -math.inf, 3, [])),  # a zero loss: no relative change
    ([(2.0, 1.0), (1.0, math.nan), (0.5, math.nan)], {}, ("passed", -math.inf, 3, [])),  # diverged, not overfit
    ([(2.0, 1.0), (1.0, math.nan)], {"patience": 1}, ("passed", -math.inf, 2, [])),  # diverged in one epoch
], ids=["strongest-window", "three-epochs", "losses-below-one", "last-change-alone", "at-the-threshold", "both-fall",
        "zero-loss", "diverged", "diverged-in-one-epoch"])
def test_overfit(tmp_path, pairs, parameters, expected):
    status, statistic, datapoints, messages = expected
    assert outcome(judge(Overfit, save_trial(tmp_path, epochs(*pairs)), **parameters)) == (
        status, statistic if statistic is None else pytest.approx(statistic), datapoints, messages)


def test_overfit_needs_more_changes_than_patience(tmp_path):
    result = judge(Overfit, save_trial(tmp_path, epochs((2.0, 1.0), (1.5, 1.25))))  # one change, patience 2
    assert (result["statistic"], result["findings"], result["violations"]) == (None, [], 0)


def test_an_epoch_is_a_training_pass_followed_by_a_validation_pass(tmp_path):
    """Passes of several steps each; a test pass (PREDICT) after training is no validation."""
    steps = losses(([2.5, 2.0, 1.5], [1.0]), ([1.75, 1.25], [1.0, 1.5, 1.25]), ([1.0], [1.25, 1.75]),
                   test=[5.0, 5.0])  # epoch means (2.0, 1.0), (1.5, 1.25), (1.0, 1.5)
    steps[-2:-2] = losses(([0.5, 0.5], [9.0]))[:2]  # a last training pass that the test pass follows
    folder = save_trial(tmp_path, steps)
    assert outcome(judge(Overfit, folder)) == (("triggered", pytest.approx(0.2), 3, [
        "valid loss rose and train loss fell by at least 20.0% an epoch for 2 epochs in a row (to train 1.0000, "
        "valid 1.5000)"]))
    assert outcome(judge(Overtraining, folder)) == ("passed", 2.0, 3, [])


# ------------------------------------------------------------------------------------ overtraining
@pytest.mark.parametrize("valid, parameters, expected", [
    ([3.0, 2.0, 2.5, 2.25, 2.75], {}, ("triggered", 3.0, 5, [
        "best valid loss 2.0000 at epoch 2, then 3 more epochs without improvement"])),
    ([3.0, 2.0, 2.0, 2.5, 2.5], {}, ("triggered", 3.0, 5, [  # an equal loss is no improvement
        "best valid loss 2.0000 at epoch 2, then 3 more epochs without improvement"])),
    ([3.0, 2.0, 2.5, 2.25], {}, ("passed", 2.0, 4, [])),
    ([3.0, 2.0, 1.875, 1.875, 1.875], {"min_relative_improvement": 0.1}, ("triggered", 3.0, 5, [
        "best valid loss 2.0000 at epoch 2, then 3 more epochs without improvement"])),  # 6 % is too little
    ([math.nan, math.inf, math.nan], {}, ("triggered", math.inf, 3, ["the valid loss was never finite over 3 epochs"])),
    ([math.nan, 2.0, 1.0], {}, ("passed", 0.0, 3, [])),
], ids=["three-after-best", "a-tie", "two-after-best", "min-improvement", "never-finite", "nan-first"])
def test_overtraining(tmp_path, valid, parameters, expected):
    steps = epochs(*((1.0, value) for value in valid))
    assert outcome(judge(Overtraining, save_trial(tmp_path, steps), **parameters)) == expected


def test_loss_rules_without_a_validation_pass_have_no_data(tmp_path):
    folder = save_trial(tmp_path, losses(([2.0] * 3, [])))
    for rule in (Overfit, Overtraining):
        assert outcome(judge(rule, folder)) == ("no data", None, 0, [])


# ------------------------------------------------------------------------------------ gradients, tensors
def gradients(*means, step_mode=TRAIN):
    """One step whose gradients (named g0, g1, ...) have these mean absolute values (signs alternate)."""
    return (step_mode, {f"gradient/g{i}": ("gradients", np.array([mean, -mean, mean, -mean])) for i, mean in
                        enumerate(means)})


def test_vanishing_gradient(tmp_path):
    steps = [gradients(1e-9, 1e-8, 1e-3, 0.0625), gradients(1e-9, 1e-8, 1e-9, 0.0625),
             gradients(1e-9, 1e-9, 1e-9, 1e-9, 1e-9), (TRAIN, {LOSS: ("losses", 1.0)})]
    result = judge(VanishingGradient, save_trial(tmp_path, steps))
    assert outcome(result) == ("triggered", 1.0, 3, [  # half of them at step 0: at the threshold; 3 of 4; all 5
        "2 of 4 gradients have mean |g| < 1e-07 (e.g. gradient/g0, gradient/g1)",
        "3 of 4 gradients have mean |g| < 1e-07 (e.g. gradient/g0, gradient/g1, gradient/g2)",
        "5 of 5 gradients have mean |g| < 1e-07 (e.g. gradient/g0, gradient/g1, gradient/g2)"])
    assert result["violations"] == 3 and result["margin"] == 2.0
    at = judge(VanishingGradient, save_trial(tmp_path / "at", [gradients(0.25, 1.0)]), threshold=0.25)
    assert outcome(at) == ("passed", 0.0, 1, [])  # a mean equal to the threshold is not below it
    healthy = judge(VanishingGradient, save_trial(tmp_path / "healthy", [gradients(0.5, 1e-9, 0.25)] * 2))
    assert outcome(healthy) == ("passed", 1 / 3, 2, []) and healthy["margin"] == pytest.approx(2 / 3)


def test_exploding_tensor(tmp_path):
    labels = {LABELS: ("losses labels", np.array([0, 1, 2, 2]))}  # saved with the loss, but class indices
    steps = [(TRAIN, {LOSS: ("losses", 1.5), "a.weight": ("weights", np.full((2, 2), -3.0)), **labels,
                      "a_output_0": ("outputs", [[5e8]])}),  # a layer's output: not one of the tensors it checks
             (TRAIN, {LOSS: ("losses", 1.5), "a.weight": ("weights", [[1.0, -2e8], [0.0, 1.0]]), **labels}),
             (EVAL, {LOSS: ("losses", math.nan)}),
             (TRAIN, {"a.weight": ("weights", [[math.inf, 0.0]]), "a.bias": ("biases", [1e9]),
                      "gradient/a.weight": ("gradients", [[3e8, 0.0]]), "gradient/a.bias": ("gradients", [-1e9]),
                      **labels}),
             (TRAIN, labels)]  # nothing it checks: no datapoint
    result = judge(ExplodingTensor, save_trial(tmp_path, steps))
    assert outcome(result) == ("triggered", math.inf, 4, [
        "a.weight max |x| 2e+08", f"{LOSS} has NaN/inf",
        "a.bias max |x| 1e+09; a.weight has NaN/inf; gradient/a.bias max |x| 1e+09 (+1 more)"])
    small = judge(ExplodingTensor, save_trial(tmp_path / "small", steps[:1]), threshold=1.75)
    assert outcome(small) == ("triggered", 3.0, 1, ["a.weight max |x| 3"])  # not the labels (up to 2: classes)
    at = judge(ExplodingTensor, save_trial(tmp_path / "at", steps[:1]), threshold=3.0)
    assert outcome(at) == ("passed", 3.0, 1, []) and at["margin"] == 1.0
    three = [(TRAIN, {f"{name}.bias": ("biases", [math.nan]) for name in "abc"})]
    assert outcome(judge(ExplodingTensor, save_trial(tmp_path / "three", three)))[3] == [
        "a.bias has NaN/inf; b.bias has NaN/inf; c.bias has NaN/inf"]


def test_findings_are_capped_and_violations_counted(tmp_path):
    steps = [(TRAIN, {"a.bias": ("biases", [step * 2.0 ** 30])}) for step in range(1, 26)]
    save_trial(tmp_path, steps)
    trial = create_trial(str(tmp_path))
    rule = ExplodingTensor(trial, last_step=trial.steps()[-1])
    invoke_rule(rule, start_step=0, end_step=len(steps))
    result = rule.result()
    assert (result["violations"], result["datapoints"], len(result["findings"])) == (25, 25, debugger_rules.MAX_FINDINGS)
    assert result["findings"][-1] == {"step": 19, "message": "a.bias max |x| 2.15e+10"}
    assert result["statistic"] == 25 * 2.0 ** 30


# ------------------------------------------------------------------------------------ weights, labels
def spread(shape, std, seed=0):
    """A weight of this shape whose standard deviation is exactly `std` (as float32)."""
    values = np.random.default_rng(seed).standard_normal(shape)
    return (values - values.mean()) / values.std() * std


WEIGHT_SHAPES = {"m.bn1.weight": (16,), "m.conv1.weight": (16, 3, 5, 5), "m.fc.weight": (10, 512),
                 "m.layer.weight": (32, 16, 3, 3), "m.proj.weight": (8, 64)}
# (fan in, fan out) -> the usual range of standard deviations: LeCun's uniform or Glorot's at the bottom, He's
# (fan in or fan out) at the top
EXPECTED = {"m.conv1.weight": math.sqrt(2 / 475), "m.fc.weight": math.sqrt(1 / 1536),
            "m.layer.weight": math.sqrt(1 / 432), "m.proj.weight": math.sqrt(1 / 192)}


def weights_step(scale):
    return (TRAIN, {name: ("weights", spread(shape, scale * EXPECTED.get(name, 1.0))) for name, shape in
                    WEIGHT_SHAPES.items()})


def test_poor_weight_initialization(tmp_path):
    """Judged once, at the first step with weights; 1-D weights (batch-norm scales) are left out."""
    folder = save_trial(tmp_path, [(TRAIN, {LOSS: ("losses", 1.0)}), weights_step(0.01), weights_step(100.0)])
    result = judge(PoorWeightInitialization, folder)
    assert outcome(result)[:3] == ("triggered", pytest.approx(100.0, rel=1e-6), 4)
    assert result["findings"] == [{"step": 1, "message": (
        "4 badly initialised weight(s): m.conv1.weight std 0.000649 (expected 0.0649-0.163); m.fc.weight std "
        "0.000255 (expected 0.0255-0.447); m.layer.weight std 0.000481 (expected 0.0481-0.118)")}]
    healthy = judge(PoorWeightInitialization, save_trial(tmp_path / "healthy", [weights_step(1.0), weights_step(0.0)]))
    assert outcome(healthy) == ("passed", pytest.approx(1.0, rel=1e-6), 4, [])
    # in double precision, from the saved float32 values: what a reader recomputing it from the tensors gets
    saved_std = {name: np.float32(spread(WEIGHT_SHAPES[name], low)).astype(np.float64).std() for name, low in
                 EXPECTED.items()}
    assert healthy["statistic"] == max(low / saved_std[name] for name, low in EXPECTED.items())
    large = judge(PoorWeightInitialization, save_trial(tmp_path / "large", [weights_step(1e3)]))
    assert large["statistic"] == pytest.approx(1e3 * (1 / 432) ** 0.5 / (2 / 144) ** 0.5, rel=1e-6)  # m.layer: std / He's
    assert large["findings"][0]["message"].startswith(
        "4 badly initialised weight(s): m.conv1.weight std 64.9 (expected 0.0649-0.163); m.fc.weight std 25.5 "
        "(expected 0.0255-0.447); ")


def test_poor_weight_initialization_fires_past_its_ratio_not_at_it(tmp_path):
    """A 2x2 weight: He's standard deviation is exactly 1, so a std of 10 is exactly the default ratio of 10."""
    steps = [(TRAIN, {"m.a.weight": ("weights", [[10.0, -10.0], [10.0, -10.0]])})]
    assert outcome(judge(PoorWeightInitialization, save_trial(tmp_path, steps))) == ("passed", 10.0, 1, [])
    assert outcome(judge(PoorWeightInitialization, save_trial(tmp_path / "4", steps), ratio=4.0)) == (
        "triggered", 10.0, 1, ["1 badly initialised weight(s): m.a.weight std 10 (expected 0.408-1)"])


def test_a_constant_or_broken_weight_is_infinitely_far_out(tmp_path):
    steps = [(TRAIN, {"m.a.weight": ("weights", np.full((4, 4), 0.5)), "m.b.weight": ("weights", spread((4, 4), 0.5))}),
             (TRAIN, {"m.a.weight": ("weights", np.full((4, 4), math.nan))})]
    result = judge(PoorWeightInitialization, save_trial(tmp_path, steps))
    assert outcome(result) == ("triggered", math.inf, 2, [
        "1 badly initialised weight(s): m.a.weight std 0 (expected 0.289-0.707)"])
    broken = judge(PoorWeightInitialization, save_trial(tmp_path / "nan", steps[1:]))
    assert outcome(broken) == ("triggered", math.inf, 1, [
        "1 badly initialised weight(s): m.a.weight std nan (expected 0.289-0.707)"])


def labels_steps(train_counts, eval_counts=()):
    """Steps saving the labels, 4 a batch, with the logits beside them (the loss's first input, named before the
    labels): training batches of these class counts, then validation ones."""
    def batches(counts, mode):
        labels = [c for c, n in enumerate(counts) for _ in range(n)]
        return [(mode, {LABELS: ("labels", labels[i:i + 4]), LABELS[:-1] + "0": ("inputs", np.eye(3)[labels[i:i + 4]])})
                for i in range(0, len(labels), 4)]
    return batches(train_counts, TRAIN) + batches(eval_counts, EVAL)


@pytest.mark.parametrize("train, parameters, expected", [
    ((44, 4, 12), {}, ("triggered", 11.0, 60, ["class 0 has 44 training pictures seen, class 1 4 (threshold 10x)"])),
    ((12, 40, 4), {}, ("passed", 10.0, 56, [])),  # exactly 10 times: not more
    ((12, 40, 4), {"num_classes": 4}, ("triggered", math.inf, 56, [
        "class 1 has 40 training pictures seen, class 3 0 (threshold 10x)"])),
    ((12, 16, 4), {"threshold": 3.5}, ("triggered", 4.0, 32, [
        "class 1 has 16 training pictures seen, class 2 4 (threshold 3.5x)"])),
], ids=["11-times", "10-times", "an-absent-class", "threshold"])
def test_class_imbalance_counts_training_labels_only(tmp_path, train, parameters, expected):
    folder = save_trial(tmp_path, labels_steps(train, eval_counts=(0, 0, 200)))
    assert outcome(judge(ClassImbalance, folder, **parameters)) == expected


def test_class_imbalance_without_labels_has_no_data(tmp_path):
    assert outcome(judge(ClassImbalance, save_trial(tmp_path, losses(([1.0] * 6, [1.0]))))) == ("no data", None, 0, [])


# ------------------------------------------------------------------------------------ run_rules, report, command
def every_rule_run(folder=None):
    """A run that fires LossNotDecreasing and ClassImbalance and passes the rest."""
    steps = epochs((2.0, 1.0), (2.0, 0.875), (2.0, 0.75)) + labels_steps((30, 2, 4))
    steps += [gradients(0.5, 0.25), weights_step(1.0)]
    return steps


def test_run_rules_runs_every_rule_over_a_folder_with_parameters(tmp_path, caplog):
    folder = save_trial(tmp_path, every_rule_run())
    caplog.set_level(logging.WARNING, logger=debugger_rules.log.name)
    results = run_rules(folder, parameters={"ClassImbalance": {"threshold": 20.0}, "Overtraining": {"patience": 1}})
    assert [(r["rule"], r["metric"], r["description"], r["recommendation"]) for r in results] == [
        (rule.__name__, rule.metric, rule.description, rule.recommendation) for rule in ALL_RULES]
    assert {r["rule"]: r["status"] for r in results} == {
        "LossNotDecreasing": "triggered", "Overfit": "passed", "Overtraining": "passed", "VanishingGradient": "passed",
        "ExplodingTensor": "passed", "PoorWeightInitialization": "passed", "ClassImbalance": "passed"}
    by_rule = {r["rule"]: r for r in results}
    assert by_rule["ClassImbalance"]["statistic"] == 15.0 and by_rule["Overtraining"]["threshold"] == 1
    assert by_rule["LossNotDecreasing"]["findings"][0]["step"] == len(every_rule_run()) - 1  # the last step
    assert by_rule["PoorWeightInitialization"]["datapoints"] == 4 and by_rule["VanishingGradient"]["datapoints"] == 1
    assert not [r for r in caplog.records if r.name == debugger_rules.log.name]  # a finished run: no warning
    assert [r["status"] for r in run_rules(folder, rules=(ClassImbalance,))] == ["triggered"]  # default 10x


def test_run_rules_over_a_run_without_its_end_mark(tmp_path, caplog):
    """A job that died before closing its hook: the rules use the steps there instead of waiting for more (for the
    steps between those saved, too: tensors are saved every few steps)."""
    folder = save_trial(tmp_path, [step for saved in every_rule_run() for step in (saved, None)], ended=False)
    caplog.set_level(logging.WARNING, logger=debugger_rules.log.name)
    results = run_rules(folder)
    assert [r["status"] for r in results][:1] == ["triggered"] and results[-1]["status"] == "triggered"
    assert [r.getMessage() for r in caplog.records if r.name == debugger_rules.log.name] == [
        f"The tensors in {folder} have no end-of-training mark; using the {len(every_rule_run())} steps there"]


def test_a_run_without_its_end_mark_is_read_once_not_polled(tmp_path, monkeypatch):
    """The steps there are all there will be: smdebug must not list the run's files again on every tensor read
    (321 listings instead of 2 here; each one LIST requests on S3)."""
    from smdebug.trials.trial import Trial

    folder = save_trial(tmp_path, [step for saved in every_rule_run() for step in (saved, None)], ended=False)
    listings, refresh_data = [], Trial.refresh_data
    monkeypatch.setattr(Trial, "refresh_data", lambda trial: listings.append(trial.path) or refresh_data(trial))
    results = run_rules(folder)
    assert results[0]["status"] == results[-1]["status"] == "triggered"  # LossNotDecreasing, ClassImbalance
    assert len(listings) <= 2  # create_trial's own reads


def test_run_rules_over_an_empty_run(tmp_path):
    folder = save_trial(tmp_path, [])
    assert {r["status"] for r in run_rules(folder)} == {"no data"}


def test_an_s3_prefix_goes_to_smdebug_as_it_is(tmp_path, monkeypatch):
    import smdebug.core.access_layer.utils as access
    import smdebug.trials

    folder, asked = save_trial(tmp_path, every_rule_run()), []
    real = smdebug.trials.create_trial
    monkeypatch.setattr(access, "has_training_ended", lambda path: asked.append(path) or True)
    monkeypatch.setattr(smdebug.trials, "create_trial", lambda path: asked.append(path) or real(str(folder)))
    results = run_rules("s3://bucket/job/output/tensors", rules=(ClassImbalance,))
    assert asked == ["s3://bucket/job/output/tensors"] * 2 and results[0]["statistic"] == 15.0


def test_unknown_parameters_and_missing_folders_are_refused(tmp_path):
    folder = save_trial(tmp_path / "run", every_rule_run())
    with pytest.raises(ValueError, match=r"^LossNotDecreasing: unknown parameter\(s\) \['bogus'\]; known: "
                                         r"\['fraction', 'min_relative_decrease', 'min_steps'\]$"):
        run_rules(folder, parameters={"LossNotDecreasing": {"bogus": 1}})
    with pytest.raises(FileNotFoundError, match=f"^No saved tensors at {re.escape(str(tmp_path / 'nothing'))}$"):
        run_rules(tmp_path / "nothing")


RESULTS = [
    {"rule": "LossNotDecreasing", "metric": "rule_loss_not_decreasing", "status": "triggered", "statistic": -math.inf,
     "findings": [{"step": 5, "message": "first"}, {"step": 6, "message": "second"}]},
    {"rule": "Overfit", "metric": "rule_overfit", "status": "passed", "statistic": 0.0, "findings": []},
    {"rule": "Overtraining", "metric": "rule_overtraining", "status": "no data", "statistic": None, "findings": []},
    {"rule": "ClassImbalance", "metric": "rule_class_imbalance", "status": "triggered", "statistic": 12.0,
     "findings": [{"step": 9, "message": "class 0 has 12"}]},
]


def test_report_rules_writes_logs_and_prints_each_rule(tmp_path, caplog, monkeypatch):
    stdout = FlushRecorder()
    monkeypatch.setattr(sys, "stdout", stdout)
    caplog.set_level(logging.INFO, logger=debugger_rules.log.name)
    out, profiler = tmp_path / "job" / "data" / "rules.json", [{"rule": "Dataloader", "statistic": math.inf}]
    report_rules(RESULTS, out, tensors=tmp_path / "tensors", profiler_results=profiler)
    assert json.loads(out.read_text()) == {
        "tensors": str(tmp_path / "tensors"), "rules": [{**RESULTS[0], "statistic": "-inf"}, *RESULTS[1:]],
        "profiler_rules": [{"rule": "Dataloader", "statistic": "inf"}]}
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == debugger_rules.log.name] == [
        (logging.WARNING, "Rule LossNotDecreasing TRIGGERED: first"), (logging.INFO, "Rule Overfit PASSED"),
        (logging.INFO, "Rule Overtraining NO DATA"), (logging.WARNING, "Rule ClassImbalance TRIGGERED: class 0 has 12"),
        (logging.INFO, f"Rules: 2 triggered (LossNotDecreasing, ClassImbalance), 1 passed, 1 without data; details "
                       f"in {out}")]
    lines = stdout.getvalue().splitlines()
    assert lines == ["rule_loss_not_decreasing=1", "rule_overfit=0", "rule_overtraining=-1", "rule_class_imbalance=1"]
    assert parse_metrics(lines) == {"rule_loss_not_decreasing": [1.0], "rule_overfit": [0.0],
                                    "rule_overtraining": [-1.0], "rule_class_imbalance": [1.0]}
    # each line flushed as it is printed: the job's log shows it even if the process dies next
    assert stdout.flushed == ["\n".join(lines[:n]) + "\n" for n in range(1, 5)]
    caplog.clear()
    report_rules(RESULTS[1:3], out)
    assert caplog.records[-1].getMessage() == f"Rules: 0 triggered, 1 passed, 1 without data; details in {out}"
    assert json.loads(out.read_text()) == {"tensors": None, "rules": RESULTS[1:3]}


def test_the_rules_command(tmp_path, capsys, monkeypatch):
    """`python -m image_classifier.diagnostics.debugger_rules TENSORS [--out] [--num-classes]`: its help, its
    log on stdout, its exit codes."""
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == (
        "usage: python -m image_classifier.diagnostics.debugger_rules [-h] [--out OUT] [--num-classes NUM_CLASSES]"
        " tensors\n\nDebugging rules over the tensors the smdebug hook saved, written as smdebug `Rule`s.\n\n"
        "positional arguments:\n  tensors               the job's saved tensors: a folder or an s3:// prefix\n\n"
        "options:\n  -h, --help            show this help message and exit\n"
        "  --out OUT             where to write the results\n"
        "  --num-classes NUM_CLASSES\n                        number of classes (lets class imbalance see absent ones)\n")
    folder = save_trial(tmp_path / "run", every_rule_run())
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process: main sets up logging itself
    monkeypatch.setattr(root, "level", logging.WARNING)
    monkeypatch.chdir(tmp_path)
    assert main([str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "WARNING Rule ClassImbalance TRIGGERED: class 0 has 30 training pictures seen, class 1 2 (threshold 10x)" in out
    assert "rule_class_imbalance=1" in out and "INFO Rule Overfit PASSED" in out
    assert len(json.loads((tmp_path / "rules.json").read_text())["rules"]) == len(ALL_RULES)  # the default --out
    assert main([str(folder), "--out", str(tmp_path / "other.json"), "--num-classes", "4"]) == 0
    rules = {r["rule"]: r for r in json.loads((tmp_path / "other.json").read_text())["rules"]}
    assert (rules["ClassImbalance"]["statistic"], rules["ClassImbalance"]["parameters"]["num_classes"]) == ("inf", 4)
    assert json.loads((tmp_path / "other.json").read_text())["tensors"] == str(folder)
    root.handlers.clear()
    assert main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"error: No saved tensors at {tmp_path / 'nothing'}\n"
