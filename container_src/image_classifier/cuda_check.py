"""Fail loudly where the host has NVIDIA GPUs that the image's torch cannot use.

A CUDA build of torch falls back to the CPU without a word when the host's driver is too old for its
CUDA runtime: a GPU job would then pay for GPUs and run about ten times slower. `train` and `serve`
call `require_usable_gpu()` first; it raises `GpuUnusableError` with the host driver's version, the
image's CUDA version and the fix. Hosts with no sign of a GPU are unaffected.

Torch-light: torch is imported only inside `require_usable_gpu`; the probe and the message are plain.
"""
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .contract import SM_NUM_GPUS  # the toolkit's GPU count

# Where the probe looks, under a root that a test can point at a fake driver tree.
PROBE_ROOT_ENV, DEFAULT_PROBE_ROOT = "IMAGE_CLASSIFIER_NVIDIA_ROOT", "/"
DRIVER_VERSION_FILE = "proc/driver/nvidia/version"  # the kernel driver's banner, e.g. "... 470.82.01 ..."
DEVICE_GLOB = "dev/nvidia[0-9]*"  # one node per GPU given to this container
# Opt-out: run on the CPU although GPUs are present (for a deliberate CPU run on a GPU host).
ALLOW_CPU_ENV = "IMAGE_CLASSIFIER_ALLOW_CPU"

# The oldest Linux driver for each CUDA major version (newer minors run on it through CUDA's
# minor-version compatibility), and the newest CUDA each driver branch runs (NVIDIA's release notes).
MIN_DRIVER_FOR_CUDA_MAJOR = {11: 450, 12: 525, 13: 580}
NEWEST_CUDA_FOR_DRIVER = [(580, "13.0"), (575, "12.9"), (570, "12.8"), (560, "12.6"), (555, "12.5"), (550, "12.4"),
                          (545, "12.3"), (535, "12.2"), (530, "12.1"), (525, "12.0"), (520, "11.8"), (515, "11.7"),
                          (510, "11.6"), (495, "11.5"), (470, "11.4"), (465, "11.3"), (460, "11.2"), (455, "11.1"),
                          (450, "11.0")]
# What SageMaker offers (DESIGN section 5): the endpoint AMI whose driver runs CUDA 12.
GPU_INFERENCE_AMI = "al2-ami-sagemaker-inference-gpu-3-1"  # driver 550, CUDA 12.4


class GpuUnusableError(RuntimeError):
    """NVIDIA GPUs are present but torch cannot use them; the message names the driver, the CUDA build and the fix."""


@dataclass(frozen=True)
class HostGpus:
    driver_version: str | None  # e.g. "470.82.01", None where the driver file is absent
    devices: tuple  # /dev/nvidia0, ...
    toolkit_count: int

    @property
    def present(self):
        return bool(self.driver_version or self.devices or self.toolkit_count)

    @property
    def driver_major(self):
        return int(self.driver_version.split(".")[0]) if self.driver_version else None


def probe(environ=None):
    """What the host shows of NVIDIA GPUs, without torch."""
    env = os.environ if environ is None else environ
    root = Path(env.get(PROBE_ROOT_ENV) or DEFAULT_PROBE_ROOT)
    try:
        banner = (root / DRIVER_VERSION_FILE).read_text(errors="replace")
    except OSError:
        banner = ""
    match = re.search(r"\b(\d{3,4}\.\d+(?:\.\d+)?)\b", banner)
    devices = tuple(sorted(glob.glob(str(root / DEVICE_GLOB))))
    try:
        count = int(env.get(SM_NUM_GPUS) or 0)
    except ValueError:
        count = 0
    return HostGpus(match.group(1) if match else None, devices, count)


def newest_cuda(driver_major):
    return next((cuda for major, cuda in NEWEST_CUDA_FOR_DRIVER if driver_major >= major), None)


def unusable_message(gpus, torch_version, cuda_version):
    """One paragraph (well under SageMaker's 1,024-character failure reason) naming the driver, the build and the fix."""
    seen = f"driver {gpus.driver_version}" if gpus.driver_version else "driver version unknown"
    if gpus.devices:
        seen += f", {len(gpus.devices)} device(s) {' '.join(gpus.devices[:4])}"
    if gpus.toolkit_count:
        seen += f", {SM_NUM_GPUS}={gpus.toolkit_count}"
    if cuda_version:
        needed = MIN_DRIVER_FOR_CUDA_MAJOR.get(int(cuda_version.split(".")[0]))
        build = f"a CUDA {cuda_version} build, which needs NVIDIA driver {needed} or newer" if needed else \
            f"a CUDA {cuda_version} build"
    else:
        build = "a CPU-only build"
    why = ""
    if gpus.driver_major is not None:
        runs = newest_cuda(gpus.driver_major)
        why = f" Driver {gpus.driver_major} runs CUDA {runs} at most." if runs else \
            f" Driver {gpus.driver_major} is older than any CUDA 11 runtime needs."
    return (f"NVIDIA GPUs are present ({seen}) but torch cannot use them: the image's torch {torch_version} is "
            f"{build}.{why} The job stops rather than run about 10 times slower on the CPU. Fix: on an endpoint, "
            f"set the production variant's InferenceAmiVersion to {GPU_INFERENCE_AMI} (driver 550; `launch.py "
            f"deploy` does on ml.g*/ml.p*); elsewhere use a host whose driver runs this CUDA version, or rebuild "
            f"the image with a torch whose CUDA build this driver runs (requirements-image.in; TORCH_INDEX_URL picks "
            f"another build of the locked version). To run on the CPU anyway, set {ALLOW_CPU_ENV}=true.")


def require_usable_gpu(environ=None):
    """Raise GpuUnusableError where GPUs are present and torch cannot use them; return the probe otherwise."""
    env = os.environ if environ is None else environ
    gpus = probe(env)
    if not gpus.present or env.get(ALLOW_CPU_ENV, "").lower() == "true":
        return gpus
    import torch

    if not torch.cuda.is_available():
        raise GpuUnusableError(unusable_message(gpus, torch.__version__, torch.version.cuda))
    return gpus
