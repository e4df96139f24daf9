"""Debugging rules over the tensors the smdebug hook saved, written as smdebug `Rule`s.

SageMaker Debugger's built-in rules ran in AWS's rule container and are not in the public smdebug package
(and Debugger closed to new customers in July 2026), so these are the project's own, run with smdebug's
`invoke_rule` over a trial (a local folder or an s3:// prefix). Per-step rules (vanishing gradient,
exploding tensor, poor weight initialisation) decide at each saved step; rules about the whole run (loss
not decreasing, overfit, overtraining, class imbalance) collect per step and decide at the last step.

Each result carries its decisive statistic (at its worst over the run), the threshold it was compared with and
the margin: how many times past the threshold the statistic went (above 1 the rule fired, below 1 it passed; 2
means twice as far as needed to fire, 0.5 half-way to firing), so a test or a reader can see how close a call was.

Inside the container they run at the end of training (`report_rules`: output/data/rules.json, a summary in
the log, one metric line per rule: 1 triggered, 0 passed, -1 no data). From the launcher:
`python -m image_classifier.diagnostics.debugger_rules TENSORS_DIR_OR_S3 [--out rules.json]`.
"""
import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np

from . import debugger_hook  # noqa: F401 - sets smdebug's log level before its first import
from ..metrics import RULE_METRICS, format_metrics
from .profiler_rules import margin as _margin, write_rules_file

from smdebug.core.modes import ModeKeys  # noqa: E402
from smdebug.rules.rule import Rule  # noqa: E402
from smdebug.rules.rule_invoker import invoke_rule  # noqa: E402

log = logging.getLogger(__name__)

MAX_FINDINGS = 20  # messages kept per rule (the count is kept in full)


class ProjectRule(Rule):
    """Base: parameters with defaults, findings instead of actions, a JSON-able result."""

    metric = None  # its name in metrics.RULE_METRICS
    description = ""
    recommendation = ""  # what to change when it fires (the report shows it)
    defaults = {}
    threshold_parameter = None  # the parameter the decisive statistic is compared with
    fires_above = True          # the rule fires when the statistic reaches the threshold from below (else above)

    def __init__(self, base_trial, last_step=None, **parameters):
        super().__init__(base_trial,
                         action_str="")  # pragma: no mutate - smdebug reads None as "" (no actions either way)
        unknown = set(parameters) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.rule_name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        self.params = {**self.defaults, **parameters}
        self.last_step = last_step
        self.findings, self.violations, self.datapoints = [], 0, 0
        self.statistic = None  # the decisive statistic at its worst (nearest to firing, or furthest past) so far
        self._steps = {}

    @property
    def threshold(self):
        return self.params[self.threshold_parameter]

    def measure(self, value):
        """Record one value of the decisive statistic and return it; NaN counts as the worst value."""
        value = float(value)
        if math.isnan(value):
            value = math.inf if self.fires_above else -math.inf
        worse = max if self.fires_above else min  # nearer to firing, or further past
        self.statistic = value if self.statistic is None else worse(self.statistic, value)
        return value

    def fire(self, step, message):
        self.violations += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append({"step": int(step), "message": message})
        return True

    def result(self):
        status = "triggered" if self.violations else ("passed" if self.datapoints else "no data")
        return {"rule": self.rule_name, "metric": self.metric, "status": status, "violations": self.violations,
                "datapoints": self.datapoints, "description": self.description, "parameters": self.params,
                "statistic": self.statistic, "threshold": self.threshold, "margin": self.margin(),
                "findings": self.findings, "recommendation": self.recommendation}

    def margin(self):
        """How many times past the threshold the statistic went (>= 1 fired); None without data."""
        return _margin(self.statistic, self.threshold, self.fires_above)

    # ---- trial helpers
    def names(self, collection):
        try:
            return self.base_trial.tensor_names(collection=collection)
        except Exception:  # noqa: BLE001 - a collection the job did not save
            return []

    def saved_at(self, name, step):
        steps = self._steps.get(name)  # pragma: no mutate - a cache: a miss reads the same steps again
        if steps is None:
            steps = self._steps[name] = set(self.base_trial.tensor(name).steps())
        return step in steps

    def value(self, name, step):
        return np.asarray(self.base_trial.tensor(name).value(step), dtype=np.float64)

    def loss_name(self):
        outputs = [n for n in self.names("losses") if n.endswith("_output_0")]
        return outputs[0] if outputs else None


def _passes(series):
    """[(mode, value)] in step order -> [(mode, [values])], one entry per consecutive run of a mode."""
    passes = []
    for mode, value in series:
        if passes and passes[-1][0] == mode:
            passes[-1][1].append(value)
        else:
            passes.append((mode, [value]))
    return passes


class LossSeriesRule(ProjectRule):
    """Collects the loss at every saved step with its mode; `decide` runs once, at the last step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.series = []
        self._loss = self.loss_name()

    def invoke_at_step(self, step):
        if self._loss and self.saved_at(self._loss, step):
            self.series.append((self.base_trial.mode(step), float(self.value(self._loss, step))))
        if step == self.last_step:
            return self.decide(step)
        return False

    def epochs(self):
        """[(train mean, valid mean)]: one per training pass that a validation pass follows."""
        pairs, passes = [], _passes(self.series)
        for (mode, values), (next_mode, next_values) in zip(passes, passes[1:]):
            if mode == ModeKeys.TRAIN and next_mode == ModeKeys.EVAL:
                pairs.append((float(np.mean(values)), float(np.mean(next_values))))
        return pairs


class LossNotDecreasing(LossSeriesRule):
    metric = "rule_loss_not_decreasing"
    recommendation = ("Lower lr (or raise it if the loss barely moves from the start), check the labels, train more "
                      "layers (trainable-layers).")
    description = "The training loss of the last part of the run is not clearly below that of the first part."
    defaults = {"min_relative_decrease": 0.1, "fraction": 1 / 3, "min_steps": 6}
    threshold_parameter, fires_above = "min_relative_decrease", False  # statistic: 1 - last / first

    def decide(self, step):
        train = [v for mode, v in self.series if mode == ModeKeys.TRAIN]
        if len(train) < self.params["min_steps"]:
            return False
        self.datapoints = len(train)
        k = max(1, int(len(train) * self.params["fraction"]))
        first, last = float(np.mean(train[:k])), float(np.mean(train[-k:]))
        decrease = 1 - last / first if math.isfinite(first) and math.isfinite(last) and first > 0 else -math.inf
        if self.measure(decrease) <= self.threshold:
            return self.fire(step, f"train loss {first:.4f} over the first {k} saved steps and {last:.4f} over "
                                   f"the last {k}: not {self.params['min_relative_decrease']:.0%} lower")
        return False


def _overfit_change(train0, valid0, train1, valid1):
    """The smaller of the relative rise of the valid loss and the relative fall of the train loss between two
    epochs; -inf where a loss is not finite and positive (a diverged run is not an overfit one)."""
    if not min(valid0, train0) > 0:
        return -math.inf
    change = min((valid1 - valid0) / valid0, (train0 - train1) / train0)
    return change if math.isfinite(change) else -math.inf


class Overfit(LossSeriesRule):
    metric = "rule_overfit"
    recommendation = ("Stop earlier (early-stopping-patience), augment more (augment=crop-flip), add weight-decay or "
                      "label-smoothing, or get more pictures.")
    description = ("The validation loss rises while the training loss falls (each by more than `min_relative_change`), "
                   "for `patience` epochs in a row.")
    defaults = {"patience": 2, "min_relative_change": 0.01}
    # statistic: the smaller of (relative rise of valid, relative fall of train), at its weakest over the best
    # `patience` epochs in a row
    threshold_parameter = "min_relative_change"

    def decide(self, step):
        epochs = self.epochs()
        self.datapoints = len(epochs)
        changes = [_overfit_change(*before, *after) for before, after in zip(epochs, epochs[1:])]
        patience = self.params["patience"]
        if len(changes) < patience:
            return False
        windows = [min(changes[end - patience:end]) for end in range(patience, len(changes) + 1)]
        strongest = max(range(len(windows)), key=windows.__getitem__)
        if self.measure(windows[strongest]) > self.threshold:
            train1, valid1 = epochs[strongest + patience]
            return self.fire(step, f"valid loss rose and train loss fell by at least {windows[strongest]:.1%} an "
                                   f"epoch for {patience} epochs in a row (to train {train1:.4f}, valid {valid1:.4f})")
        return False


class Overtraining(LossSeriesRule):
    metric = "rule_overtraining"
    recommendation = ("Fewer epochs or early-stopping-patience: the saved model is the best-valid one, the epochs "
                      "after it cost money for nothing.")
    description = "Training went on for `patience` epochs or more after the validation loss last improved."
    defaults = {"patience": 3, "min_relative_improvement": 0.0}
    threshold_parameter = "patience"  # statistic: epochs after the best valid loss

    def decide(self, step):
        valid = [v for _, v in self.epochs()]
        self.datapoints = len(valid)
        if not valid:
            return False
        best, best_epoch = math.inf, 0
        for epoch, loss in enumerate(valid, 1):
            if loss < best * (1 - self.params["min_relative_improvement"]):
                best, best_epoch = loss, epoch
        if best_epoch == 0:
            self.measure(math.inf)
            return self.fire(step, f"the valid loss was never finite over {len(valid)} epochs")
        if self.measure(len(valid) - best_epoch) >= self.threshold:
            return self.fire(step, f"best valid loss {best:.4f} at epoch {best_epoch}, then "
                                   f"{len(valid) - best_epoch} more epochs without improvement")
        return False


class VanishingGradient(ProjectRule):
    metric = "rule_vanishing_gradient"
    recommendation = "Raise lr, try optimizer=adamw, or freeze fewer layers (trainable-layers); check the pictures."
    description = "At a saved step, at least `min_share` of the gradients have a mean absolute value below `threshold`."
    defaults = {"threshold": 1e-7, "min_share": 0.5}
    threshold_parameter = "min_share"  # statistic: the share of gradients below `threshold`

    def invoke_at_step(self, step):
        means = {n: float(np.abs(self.value(n, step)).mean())
                 for n in self.names("gradients") if self.saved_at(n, step)}
        if not means:
            return False
        self.datapoints += 1
        small = sorted(n for n, m in means.items() if m < self.params["threshold"])
        if self.measure(len(small) / len(means)) >= self.threshold:
            return self.fire(step, f"{len(small)} of {len(means)} gradients have mean |g| < "
                                   f"{self.params['threshold']:g} (e.g. {', '.join(small[:3])})")
        return False


class ExplodingTensor(ProjectRule):
    metric = "rule_exploding_tensor"
    recommendation = "Lower lr (or batch-size with it), try amp=false, and check the data for broken pictures."
    description = "A saved loss, weight, gradient or bias is NaN or infinite, or larger than `threshold` in absolute value."
    defaults = {"threshold": 1e8}
    threshold_parameter = "threshold"  # statistic: the largest |x| (infinite for NaN or inf)
    collections = ("losses", "weights", "gradients", "biases")

    def invoke_at_step(self, step):
        names = sorted({n for c in self.collections for n in self.names(c) if n.endswith("_input_1") is False})
        saved, bad = [name for name in names if self.saved_at(name, step)], []
        for name in saved:
            value = self.value(name, step)
            if not np.all(np.isfinite(value)):
                self.measure(math.inf)
                bad.append(f"{name} has NaN/inf")
            elif value.size and self.measure(np.abs(value).max()) > self.threshold:
                bad.append(f"{name} max |x| {np.abs(value).max():.3g}")
        if saved:
            self.datapoints += 1
        if bad:
            return self.fire(step, "; ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""))
        return False


class PoorWeightInitialization(ProjectRule):
    metric = "rule_poor_weight_initialization"
    recommendation = ("Start from the pretrained weights (pretrained=true) or check the weights file given to the "
                      "pretrained channel.")
    description = ("At the first saved step, a conv/linear weight is constant, or its standard deviation is "
                   "more than `ratio` times outside the range of the usual initialisations (LeCun, Glorot, He).")
    defaults = {"ratio": 10.0}
    threshold_parameter = "ratio"  # statistic: how many times outside the usual range the worst std is

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.done = False  # pragma: no mutate - None is as false as False here

    def invoke_at_step(self, step):
        if self.done:
            return False
        names = [n for n in self.names("weights") if self.saved_at(n, step)]
        if not names:
            return False
        self.done = True
        bad = []
        for name in names:
            weight = self.value(name, step)
            if weight.ndim < 2:  # batch-norm scales start at 1 by design
                continue
            self.datapoints += 1
            receptive = int(np.prod(weight.shape[2:]))
            fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
            # The lowest of the usual standard deviations is LeCun's uniform (PyTorch's default) or Glorot's, the
            # highest He's (by fan in or fan out); LeCun's normal and the other of He's lie between them.
            low = min(math.sqrt(1 / (3 * fan_in)), math.sqrt(2 / (fan_in + fan_out)))
            high = max(math.sqrt(2 / fan_in), math.sqrt(2 / fan_out))
            std = float(weight.std())
            outside = max(std / high, low / std) if math.isfinite(std) and std > 0 else math.inf
            if self.measure(outside) > self.threshold:
                bad.append(f"{name} std {std:.3g} (expected {low:.3g}-{high:.3g})")
        if bad:
            return self.fire(step, f"{len(bad)} badly initialised weight(s): " + "; ".join(bad[:3]))
        return False


class ClassImbalance(ProjectRule):
    metric = "rule_class_imbalance"
    recommendation = "Collect more pictures of the rare classes (or fewer of the common one) before trusting accuracy."
    description = ("In the training labels seen, the most frequent class has more than `threshold` times the "
                   "pictures of the least frequent one (or a class never appears, given `num_classes`).")
    defaults = {"threshold": 10.0, "num_classes": None}
    threshold_parameter = "threshold"  # statistic: pictures of the most frequent class / of the least

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts = {}
        labels = self.names(debugger_hook.LABELS_COLLECTION)
        self._labels = labels[0] if labels else None

    def invoke_at_step(self, step):
        if self._labels and self.saved_at(self._labels, step) and self.base_trial.mode(step) == ModeKeys.TRAIN:
            for label in self.value(self._labels, step).ravel():
                self.counts[int(label)] = self.counts.get(int(label), 0) + 1
        if step != self.last_step or not self.counts:
            return False
        classes = range(self.params["num_classes"]) if self.params["num_classes"] else sorted(self.counts)
        counts = {c: self.counts.get(c, 0) for c in classes}
        self.datapoints = sum(counts.values())
        most, least = max(counts, key=counts.get), min(counts, key=counts.get)
        ratio = counts[most] / counts[least] if counts[least] else math.inf
        if self.measure(ratio) > self.threshold:
            return self.fire(step, f"class {most} has {counts[most]} training pictures seen, class {least} "
                                   f"{counts[least]} (threshold {self.params['threshold']:g}x)")
        return False


ALL_RULES = (LossNotDecreasing, Overfit, Overtraining, VanishingGradient, ExplodingTensor,
             PoorWeightInitialization, ClassImbalance)
assert tuple(r.metric for r in ALL_RULES) == RULE_METRICS  # one list of rules, one of their metric names


def run_rules(path, rules=ALL_RULES, parameters=None):
    """Run `rules` over the trial at `path` (folder or s3://); returns their results, in order.
    `parameters`: {rule name: {parameter: value}}."""
    from smdebug.core.access_layer.utils import has_training_ended
    from smdebug.trials import create_trial

    parameters = parameters or {}
    path = str(path)
    if not path.startswith("s3://") and not Path(path).is_dir():
        raise FileNotFoundError(f"No saved tensors at {path}")
    ended = has_training_ended(path)
    trial = create_trial(path)
    steps = trial.steps()
    if not ended and steps:
        # A job that died before closing its hook: nothing more will come, so stop smdebug waiting for it.
        log.warning("The tensors in %s have no end-of-training mark; using the %d steps there", path, len(steps))
        trial.loaded_all_steps, trial.last_complete_step = True, steps[-1]
    results = []
    for rule_class in rules:
        rule = rule_class(trial, last_step=steps[-1] if steps else None,
                          **parameters.get(rule_class.__name__, {}))
        if steps:
            invoke_rule(rule, end_step=steps[-1] + 1,
                        start_step=steps[0])  # pragma: no mutate - smdebug skips steps never saved (from 0)
        results.append(rule.result())
    return results


def report_rules(results, out_file, tensors=None, profiler_results=None):
    """rules.json (with the profiler rules' results when given), a summary in the log and one metric line
    per rule."""
    # Strict JSON: an infinite statistic or margin (a NaN loss, say) is written as the string "inf" / "-inf".
    write_rules_file(out_file, results, profiler_results, tensors)
    value = {"triggered": 1, "passed": 0, "no data": -1}
    for result in results:
        detail = f": {result['findings'][0]['message']}" if result["findings"] else ""
        log.log(logging.WARNING if result["status"] == "triggered" else logging.INFO,
                "Rule %s %s%s", result["rule"], result["status"].upper(), detail)
        print(format_metrics(**{result["metric"]: value[result["status"]]}), flush=True)
    triggered = [r["rule"] for r in results if r["status"] == "triggered"]
    log.info("Rules: %d triggered%s, %d passed, %d without data; details in %s", len(triggered),
             f" ({', '.join(triggered)})" if triggered else "",
             sum(r["status"] == "passed" for r in results), sum(r["status"] == "no data" for r in results), out_file)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m image_classifier.diagnostics.debugger_rules", description=__doc__.split("\n")[0])
    parser.add_argument("tensors", help="the job's saved tensors: a folder or an s3:// prefix")
    parser.add_argument("--out", default="rules.json", help="where to write the results")  # a path or its text
    parser.add_argument("--num-classes", type=int, help="number of classes (lets class imbalance see absent ones)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    parameters = {"ClassImbalance": {"num_classes": args.num_classes}}  # None (the default): the classes seen
    try:
        results = run_rules(args.tensors, parameters=parameters)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report_rules(results, args.out, args.tensors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
