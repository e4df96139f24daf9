"""Shared fixtures: tiny datasets the tests make, and a tiny real training run."""
import importlib.util
import io
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))  # launch.py and the launcher package

# The SDK v3 environment (`make test-sdk3`, .venv-sdk3) holds the launcher's and the tests' packages, not the
# container's: there the launcher tests that train or serve for real skip, with this reason; `make test` runs them.
CONTAINER_PACKAGES = ("torch", "torchvision", "sagemaker_training", "sagemaker_inference")
NO_CONTAINER_PACKAGES = ("needs the container's packages (torch, the SageMaker training and inference toolkits), "
                         "which the SDK v3 environment (make test-sdk3) leaves out; make test runs it")


def container_packages_missing():
    return any(importlib.util.find_spec(name) is None for name in CONTAINER_PACKAGES)


def require_container_packages():
    """At the top of a test module that trains or serves for real: skip it where the container's packages are not
    installed (the SDK v3 environment)."""
    if container_packages_missing():
        pytest.skip(NO_CONTAINER_PACKAGES, allow_module_level=True)


needs_container_packages = pytest.mark.skipif(container_packages_missing(), reason=NO_CONTAINER_PACKAGES)

# Small, fast and still learnable: a ResNet-18 from scratch on 16 px coloured pictures.
TINY_HYPERPARAMETERS = {
    "arch": "resnet18", "pretrained": "false", "trainable-layers": "4", "image-size": "16",
    "epochs": "2", "batch-size": "8", "lr": "0.01", "augment": "crop-flip", "workers": "0",
}
# /proc/driver/nvidia/version of a host with the 470 driver (SageMaker's default on g4dn/g5/p4d).
DRIVER_BANNER = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.82.01  Wed Oct 27 21:21:55 UTC 2021\n"
                 "GCC version:  gcc version 7.3.1 20180712 (Red Hat 7.3.1-13) (GCC)\n")
TINY_CLASSES = ("001.Red_fox", "002.Green_frog", "003.Blue_whale")
_COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))


def write_picture(path, colour, size=20, seed=0, fmt=None):
    """A noisy picture dominated by `colour`, so the classes are easy to tell apart."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def stable_seed(*parts):
    """The same seed in every process (Python's own hash() of a string changes with each process)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def make_dataset(root, per_split=None, classes=TINY_CLASSES, nested=True):
    """dogImages-style tree: root/{train,valid,test}/<class>/<name>.jpg (nested) or one root per split."""
    per_split = per_split or {"train": 12, "valid": 6, "test": 6}
    root = Path(root)
    for split, count in per_split.items():
        for label, folder in enumerate(classes):
            base = root / split if nested else root.parent / f"{root.name}_{split}"
            for i in range(count):
                ext = ".JPG" if i % 3 == 0 else ".jpg"  # the real set mixes cases
                write_picture(base / folder / f"{folder.split('.')[-1]}_{i:05d}{ext}", _COLOURS[label % 3],
                              seed=stable_seed(split, label, i))
    return root


def untrained_artifact(folder, classes, arch="resnet18", image_size=16):
    """A real artifact (random weights, a ResNet-18 at 16 px unless told), made without training, for tests
    where only its shape matters."""
    import torch

    from image_classifier.model import ModelConfig, build_model, save_artifact

    torch.manual_seed(0)
    save_artifact(folder, build_model(arch, len(classes)), ModelConfig(arch, list(classes), image_size))
    return folder


def train_job(tmp_path, hyperparameters=None, channels=None, name="job", echo=False):
    """Run the real training job (toolkit `train` subprocess) over an /opt/ml tree; returns the LocalJob."""
    from launcher.local import process as local_process, trees

    if channels is None:
        channels = {"train": make_dataset(tmp_path / "data")}
    hps = dict(TINY_HYPERPARAMETERS, **(hyperparameters or {}))
    job = trees.prepare_job(tmp_path / "jobs", name, channels, hps)
    exit_code = local_process.train(job, echo=echo)
    trees.finish(job)
    return job, exit_code


@pytest.fixture(autouse=True)
def _notice_marker_in_tmp(tmp_path, monkeypatch):
    """The SDK notice's once-per-machine marker (launcher/aws.py) goes to the test's folder, never the user's."""
    monkeypatch.setenv("IMAGE_CLASSIFIER_CACHE_DIR", str(tmp_path / "user-cache"))


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory):
    """A real model folder (model.pth + model.json) from a tiny training run, shared by the session."""
    tmp = tmp_path_factory.mktemp("trained")
    job, exit_code = train_job(tmp, {"epochs": "1"})
    assert exit_code == 0, job.log_file.read_text()[-3000:]
    return job.dir / "model"


class FlushRecorder(io.StringIO):
    """stdout that records what had been written at each flush (the rules' metric lines must be flushed as printed)."""

    def __init__(self):
        super().__init__()
        self.flushed = []

    def flush(self):
        self.flushed.append(self.getvalue())
