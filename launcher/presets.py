"""Named sets of hyperparameters for the common cases (`train --preset NAME`, `tune --preset NAME`).

A preset is only a starting point: `--hp KEY=VALUE` overrides any of its values. The job records the preset's
name as its `preset` hyperparameter, so its log, its model.json and the launcher's summary say which it was.
"""
from . import LauncherError

PRESETS = {
    # The demo's run: a small ResNet from scratch at 32 px learns the digits sample in about a minute on 2 cores;
    # no ImageNet weights needed, so it runs offline.
    "cpu-quick": ("ResNet-18 from scratch at 32 px, 8 epochs: minutes on a laptop CPU, no download", {
        "arch": "resnet18", "pretrained": "false", "trainable-layers": "4", "image-size": "32",
        "epochs": "8", "batch-size": "32", "lr": "0.002", "augment": "none", "workers": "2",
    }),
    # The reference fine-tune (the original project's): ImageNet ResNet-50 at 224 px, its last stage and a new
    # head trained, crop-and-flip augmentation, on a GPU (about 1.8 s a step on 2 CPU cores: far too slow there).
    "gpu-finetune": ("ImageNet ResNet-50 at 224 px, last stage and head, 5 epochs: the reference GPU run", {
        "arch": "resnet50", "pretrained": "true", "trainable-layers": "1", "image-size": "224",
        "epochs": "5", "batch-size": "64", "lr": "0.0026", "augment": "crop-flip",
    }),
}
PRESET_KEY = "preset"  # the job's hyperparameter that records the preset's name


def describe():
    """One line per preset, for --help."""
    return "; ".join(f"{name}: {summary}" for name, (summary, _) in PRESETS.items())


def hyperparameters(preset, overrides):
    """The preset's values (none without a preset), its name recorded, overridden by `overrides` (--hp)."""
    values = {}
    if preset:
        if preset not in PRESETS:
            raise LauncherError(f"--preset {preset}: no such preset; choose one of {', '.join(PRESETS)}")
        values = {**PRESETS[preset][1], PRESET_KEY: preset}
    return {**values, **overrides}
