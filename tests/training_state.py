"""Comparing training checkpoints bit for bit (the stop/resume tests, in process and in the image)."""
import torch

# Wall-clock figures (the running compute, data-wait and wall seconds; rates, data-wait share and GPU use in the
# history): the only state that may differ.
TIMING_KEYS = {"seconds", "images_per_sec", "data_seconds", "wall_seconds", "wall_images_per_sec", "data_wait_share",
               "gpu_utilization", "gpu_peak_memory_mb"}
# Everything the rest of a run depends on.
TRAINING_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "step", "debugger", "state", "folders")


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_equal(a, b, where="checkpoint"):
    """Bit-for-bit equality of nested checkpoint values (tensors, containers, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key not in TIMING_KEYS:
                assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(resumed, reference):
    for key in TRAINING_STATE_KEYS:
        assert_equal(resumed[key], reference[key], key)
