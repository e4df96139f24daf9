"""Hyperparameters: one typed, ranged, documented definition, and the parser that enforces it.

SageMaker passes every hyperparameter as a string (`hyperparameters.json`), with kebab-case keys as the
original project used them (`lr`, `batch-size`). `Hyperparameters.from_strings` turns them into this
frozen dataclass, or raises `HyperparameterError` naming the key and what it allows. The table in docs/TRAINING.md
is generated from the same fields (`python -m image_classifier.training.hyperparameters`), and a test keeps them equal.
"""
import difflib
import re
from dataclasses import MISSING, dataclass, field, fields

from ..metrics import quote_for_log

# torchvision networks the job fine-tunes (model.FAMILIES: each one's head and stages). The MobileNetV3s cost
# a few percent of a ResNet-50's forward pass: cheap CPU endpoints, and jobs whose input pipeline is the limit.
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v3_small", "mobilenet_v3_large")
# Keys SageMaker and its tools add to hyperparameters.json, not ours to validate: `sagemaker_*` (the SDK's
# script-mode and tuner keys, the toolkit's framework parameters, read by the toolkit and toolkit_entry) and
# the one `_` key a tuning job adds to its trials. Any other `_` key is refused like an unknown key.
PLATFORM_PREFIX = "sagemaker_"
PLATFORM_KEYS = ("_tuning_objective_metric",)
_PLAIN_KEY = re.compile(r"[\w.-]{1,100}")
_NAME = re.compile(r"[a-z0-9-]{0,40}")  # a free-text value (str without choices): a short plain name
ALL_LAYERS = 4  # trainable-layers: the whole network


class HyperparameterError(ValueError):
    """A hyperparameter that is unknown or out of range; the message names the key."""


def _hp(default, help, *, min=None, max=None, choices=None):
    # Runs at import, while the class is made, before mutmut switches a mutant on: its mutants cannot be tried
    # (the fields it makes are checked by every test of the defaults, ranges and docs table).
    metadata = {"help": help, "min": min, "max": max, "choices": choices}  # pragma: no mutate - runs at import
    return field(default=default, metadata=metadata)  # pragma: no mutate - runs at import


@dataclass(frozen=True)
class Hyperparameters:
    # model
    arch: str = _hp("resnet50", "torchvision network to fine-tune.", choices=ARCHS)
    pretrained: bool = _hp(True, "Start from ImageNet weights (cache, `pretrained` channel or download).")
    weights_download: bool = _hp(False, "Allow downloading pretrained weights when none are cached.")
    trainable_layers: int = _hp(
        1, "How many of the last stages (one per resolution) train besides the new head (0 = head only, 4 = all). "
        "With pretrained=false and no value given: 4 (a random network trains whole).", min=0, max=ALL_LAYERS)
    image_size: int = _hp(224, "Square input size in pixels.", min=16, max=1024)
    # optimisation
    epochs: int = _hp(5, "Passes over the training set.", min=1, max=1000)
    batch_size: int = _hp(64, "Pictures per step (per GPU in data-parallel jobs).", min=1, max=4096)
    lr: float = _hp(0.0026, "Peak learning rate.", min=1e-7, max=10.0)
    optimizer: str = _hp("adam", "Optimiser.", choices=("adam", "adamw", "sgd"))
    momentum: float = _hp(0.9, "Momentum (sgd only).", min=0.0, max=0.999)
    weight_decay: float = _hp(0.0, "L2 penalty / decoupled weight decay (adamw).", min=0.0, max=1.0)
    label_smoothing: float = _hp(0.0, "Label smoothing of the cross-entropy loss.", min=0.0, max=0.5)
    lr_schedule: str = _hp("cosine", "Learning-rate schedule over all steps.", choices=("constant", "cosine", "step"))
    augment: str = _hp(
        "crop-flip", "Training augmentation: random resized crop and horizontal flip, crop only, or none.",
        choices=("crop-flip", "crop", "none"))
    amp: bool = _hp(True, "Mixed precision on GPU (ignored on CPU).")
    decode_cache: str = _hp(
        "auto", "Decode each picture once and keep it resized (uint8, one memory-mapped file shared by the loader "
        "workers); auto: on when it fits half the host's available memory.", choices=("auto", "on", "off"))
    quantize: bool = _hp(
        True, "At the end, make an int8 model for CPU serving (NNCF, calibrated on up to 300 training pictures) and "
        "keep it when its valid top-1 is at most 0.5 points below fp32's (one picture on tiny sets); needs at "
        "least 100 training pictures.")
    # run control
    workers: int = _hp(-1, "Data-loading processes (-1 = one per CPU, at most 8).", min=-1, max=64)
    seed: int = _hp(42, "Random seed; results are deterministic on CPU for a fixed seed (and thread count: a local "
                    "job on a busy machine gives way to other processes, docs/TRAINING.md).", min=0, max=2**31 - 1)
    early_stopping_patience: int = _hp(
        0, "Stop after this many epochs without a better valid_loss (0 = off).", min=0, max=1000)
    max_steps_per_epoch: int = _hp(0, "Cap on training steps per epoch, for smoke runs (0 = no cap).", min=0, max=10**7)
    on_bad_image: str = _hp(
        "skip", "A picture that cannot be decoded: skip it (warning and a count in the metrics) or fail the job.",
        choices=("skip", "fail"))
    # debugging and profiling
    debug_hook: bool = _hp(
        True, "Save tensors with the smdebug hook (output/tensors): losses often, weights/gradients/biases sparsely.")
    debug_loss_interval: int = _hp(1, "Save the train and valid loss every N steps.", min=1, max=10**6)
    debug_tensor_interval: int = _hp(
        200, "Save weights, gradients and biases every N training steps, step 0 included (a ResNet-50 save "
        "costs ~180 MB and ~1 s).", min=1, max=10**7)
    rules: bool = _hp(True, "Run the debugging rules on the saved tensors at the end (output/data/rules.json).")
    profile: bool = _hp(False, "torch.profiler over a few steps, and a system monitor (CPU, memory, GPU, data wait).")
    profile_start_step: int = _hp(5, "Training step where the torch.profiler window starts.", min=0, max=10**7)
    profile_steps: int = _hp(5, "Training steps the torch.profiler window records.", min=1, max=1000)
    # provenance
    preset: str = _hp("", "The launcher's `--preset` these values started from (recorded in the log and model.json; "
                      "sets nothing itself).")

    @staticmethod
    def key(name):
        return name.replace("_", "-")

    @classmethod
    def from_strings(cls, raw):
        """Parse SageMaker's hyperparameters (strings or JSON values); unknown keys are errors."""
        by_key = {cls.key(f.name): f for f in fields(cls)}
        values = {}
        for key, value in raw.items():
            if key.startswith(PLATFORM_PREFIX) or key in PLATFORM_KEYS:
                continue
            spec = by_key.get(key)
            if spec is None:
                # n and cutoff are difflib's defaults and only the best match is shown; a snake_case key is
                # as close to its kebab-case twin either way: the mutants of this line are equivalent
                close = difflib.get_close_matches(key.replace("_", "-"), by_key, n=1, cutoff=0.6)  # pragma: no mutate
                hint = f" Did you mean '{close[0]}'?" if close else ""
                shown = f"'{key}'" if _PLAIN_KEY.fullmatch(key) else quote_for_log(key)  # a key is data too
                raise HyperparameterError(
                    f"Unknown hyperparameter {shown}.{hint} Known: {', '.join(sorted(by_key))}.")
            values[spec.name] = _parse(key, spec, value)
        if not values.get("pretrained", True) and "trainable_layers" not in values:
            values["trainable_layers"] = ALL_LAYERS  # frozen random layers never learn: train them all
        hp = cls(**values)
        check_pairs(hp)
        return hp

    def to_strings(self):
        """The kebab-case string form SageMaker stores (what `from_strings` reads back)."""
        return {self.key(f.name): _format(getattr(self, f.name)) for f in fields(self)}


# Values that contradict each other (a value set that another makes meaningless): hp -> the problem and its fix,
# or None. Judged on values, not on which keys were given, as SageMaker jobs receive every key.
CONTRADICTIONS = (
    lambda hp: f"momentum={hp.momentum:g} applies to optimizer=sgd only (optimizer={hp.optimizer}): drop momentum "
               "or set optimizer=sgd" if hp.momentum != _default("momentum") and hp.optimizer != "sgd" else None,
    lambda hp: "profile-start-step and profile-steps need profile=true: add it, or drop them"
    if not hp.profile and (hp.profile_start_step, hp.profile_steps) != (_default("profile_start_step"),
                                                                        _default("profile_steps")) else None,
)


def _default(name):
    return next(spec.default for spec in fields(Hyperparameters) if spec.name == name)


def check_pairs(hp):
    """Refuse values that contradict each other, all named at once."""
    problems = [problem for rule in CONTRADICTIONS if (problem := rule(hp))]
    if problems:
        raise HyperparameterError("Contradictory hyperparameters: " + "; ".join(problems) + ".")


def _format(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe(spec):
    """What a hyperparameter allows, in words (used in errors and in the docs/TRAINING.md table)."""
    meta = spec.metadata
    if meta["choices"]:
        return "one of " + ", ".join(meta["choices"])
    if spec.type is str:
        return "a name: up to 40 lower-case letters, digits and '-'"
    if spec.type is bool:
        return "true or false"
    kind = "an integer" if spec.type is int else "a number"
    return f"{kind} from {_format(meta['min'])} to {_format(meta['max'])}"


def _parse(key, spec, value):
    text = str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':  # the SDK's framework estimators JSON-encode strings
        text = text[1:-1]
    try:
        if spec.type is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            parsed = lowered in ("true", "1")
        elif spec.type is int:
            number = float(text)  # SageMaker's tuner may send "64.0" for an integer
            if not number.is_integer():
                raise ValueError
            parsed = int(number)
        elif spec.type is float:
            parsed = float(text)
            # float() reads "inf" in any case: the spelling's mutants are equivalent
            if parsed != parsed or parsed in (float("inf"), float("-inf")):  # pragma: no mutate
                raise ValueError
        else:
            parsed = text
    except ValueError:
        raise HyperparameterError(f"Hyperparameter '{key}' = {value!r} is not valid: expected {describe(spec)}.") from None
    meta = spec.metadata
    if spec.type is str and not meta["choices"] and not _NAME.fullmatch(parsed):
        raise HyperparameterError(f"Hyperparameter '{key}' = {value!r} is not valid: expected {describe(spec)}.")
    if meta["choices"] and parsed not in meta["choices"]:
        raise HyperparameterError(f"Hyperparameter '{key}' = {value!r} is not allowed: expected {describe(spec)}.")
    if meta["min"] is not None and not meta["min"] <= parsed <= meta["max"]:
        raise HyperparameterError(f"Hyperparameter '{key}' = {value!r} is out of range: expected {describe(spec)}.")
    return parsed


def markdown_table():
    """The hyperparameter table of docs/TRAINING.md, generated from the dataclass."""
    rows = ["| key | default | allowed | what it does |", "| --- | --- | --- | --- |"]
    for spec in fields(Hyperparameters):
        default = spec.default if spec.default is not MISSING else ""  # pragma: no mutate - every field has one
        rows.append(f"| `{Hyperparameters.key(spec.name)}` | `{_format(default)}` | {describe(spec)} | {spec.metadata['help']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
