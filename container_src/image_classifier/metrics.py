"""The metric lines the training job prints, and the regexes that read them back.

This module is the single definition of the format: the training job formats its lines with it, and the
launcher passes METRIC_DEFINITIONS to SageMaker (which scrapes the log with them) and parses local logs
with the same regexes. It imports nothing heavy, so the launcher can use it without torch.
"""
import json
import re

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

# name -> the metric's line prefix context; each regex captures one number.
# images_per_sec counts compute only; wall_images_per_sec is the rate the user pays for (pictures over the
# epoch's training wall-clock time, waiting for data included), data_wait_share the part of step time spent
# waiting for the loader (0-1).
EPOCH_METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "images_per_sec", "bad_images",
                 "wall_images_per_sec", "data_wait_share")
# On a GPU job only: mean GPU utilisation (%) over the epoch's training, and its peak allocated memory (MiB).
GPU_EPOCH_METRICS = ("gpu_utilization", "gpu_peak_memory_mb")
# On a CPU job alone on its host: the cores other processes kept busy on average while the epoch trained (the
# job gives way to them: training/cpu_share.py).
CPU_EPOCH_METRICS = ("cpu_taken_elsewhere",)
FINAL_METRICS = ("test_loss", "test_acc")
# The model the job saves (the best-valid_loss epoch's weights), printed after each epoch: the last such line
# is the value of the model it ships, and the tuner's objective (`best_valid_acc` or `best_valid_loss`).
SAVED_MODEL_METRICS = ("best_valid_loss", "best_valid_acc")


def _regex(name):
    # Anchored on the key preceded by a space or line start, so `valid_loss` never matches `train_loss`.
    return rf"(?:^|\s){name}={_NUMBER}"


METRIC_DEFINITIONS = [
    {"Name": "epoch", "Regex": r"(?:^|\s)epoch=([0-9]+)\s"}
] + [{"Name": name, "Regex": _regex(name)}
       for name in EPOCH_METRICS + GPU_EPOCH_METRICS + CPU_EPOCH_METRICS + FINAL_METRICS + SAVED_MODEL_METRICS]

# One line per debugging rule at the end of training (diagnostics/debugger_rules.py): 1 triggered, 0 passed, -1 not enough data.
RULE_METRICS = ("rule_loss_not_decreasing", "rule_overfit", "rule_overtraining", "rule_vanishing_gradient",
                "rule_exploding_tensor", "rule_poor_weight_initialization", "rule_class_imbalance")
# One line per profiler rule (diagnostics/profiler_rules.py): 1 triggered, 0 passed, -1 not enough data, -2 not applicable
# (a GPU rule on a CPU job).
PROFILER_RULE_METRICS = ("rule_dataloader", "rule_cpu_bottleneck", "rule_io_bottleneck", "rule_low_gpu_utilization",
                         "rule_gpu_memory_increase", "rule_step_outlier", "rule_batch_size",
                         "rule_max_initialization_time", "rule_load_balancing")
# The int8 model (training/quantize.py), once at the end: int8_kept 1 accepted, 0 rejected by the accuracy gate,
# -1 not made (quantize=false, a set too small to calibrate); both top-1 accuracies on the validation split.
INT8_METRICS = ("int8_kept", "fp32_valid_acc", "int8_valid_acc")
METRIC_DEFINITIONS += [{"Name": name, "Regex": _regex(name)}
                       for name in RULE_METRICS + PROFILER_RULE_METRICS + INT8_METRICS]
ONE_DECIMAL = ("images_per_sec", "wall_images_per_sec", "gpu_utilization", "gpu_peak_memory_mb")


def format_metrics(**values):
    """One metric line: `key=value` pairs, floats with 4 decimals (rates, GPU use and memory with 1)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:.1f}" if key in ONE_DECIMAL else f"{value:.4f}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def quote_for_log(text):
    """Data (a class name, a file name, a path, an error about one) as it goes into a log line: a JSON string
    with `=` escaped too, so it can never hold the `key=number` these regexes read, nor start a new line."""
    return json.dumps(str(text)).replace("=", "\\u003d")


def parse_metrics(lines):
    """Apply METRIC_DEFINITIONS to log lines, as SageMaker does: {name: [values in order]}."""
    compiled = [(d["Name"], re.compile(d["Regex"])) for d in METRIC_DEFINITIONS]
    found = {}
    for line in lines:
        for name, regex in compiled:
            match = regex.search(line)
            if match:
                found.setdefault(name, []).append(float(match.group(1)))
    return found
