"""Fail loudly where the host has NVIDIA GPUs that the image's torch cannot use.

A CUDA build of torch falls back to the CPU without a word when the host's driver is too old for its
CUDA runtime, or when the process may not open the GPU's device files: a GPU job would then pay for GPUs
and run 10-50 times slower. `train` and `serve` call `require_usable_gpu()` first; it raises
`GpuUnusableError` with the host driver's version, the image's CUDA version and the fix, which depends on
what failed (a driver too old for the build: the endpoint AMI whose driver runs it; a driver new enough: the
device files and the user). `serve` also runs this module (`python -m image_classifier.cuda_check`) as the
model server's user before the model server starts, and every serving worker checks again at load, with a
real CUDA operation (`exercise=True`). Hosts with no sign of a GPU are unaffected.

Torch-light: torch is imported only inside `require_usable_gpu`; the probe and the message are plain.
"""
import glob
import os
import re
import sys
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
# What SageMaker offers (DESIGN section 5): endpoint AMIs (the production variant's InferenceAmiVersion) and
# their drivers. `launch.py deploy` sets GPU_INFERENCE_AMI on ml.g*/ml.p*. Training hosts' drivers cannot be
# chosen (and are not documented).
GPU_INFERENCE_AMI = "al2-ami-sagemaker-inference-gpu-3-1"  # driver 550, CUDA 12.4
INFERENCE_AMI_DRIVERS = {"al2-ami-sagemaker-inference-gpu-2-1": 535, GPU_INFERENCE_AMI: 550}


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


def driver_needed(cuda_version):
    """The oldest driver that runs a CUDA `cuda_version` build ("12.8"), None for a CPU build or an unknown major."""
    return MIN_DRIVER_FOR_CUDA_MAJOR.get(int(cuda_version.split(".")[0])) if cuda_version else None


def fix_advice(gpus, cuda_version):
    """What to do, from what failed: a CPU build, a driver too old for the build, or a driver that is new enough."""
    rebuild = ("rebuild the image with a torch whose CUDA build this driver runs (requirements-image.in; "
               "TORCH_INDEX_URL picks another build of the locked version)")
    if not cuda_version:
        return "rebuild the image with a CUDA build of torch (requirements-image.in; TORCH_INDEX_URL)."
    needed = driver_needed(cuda_version)
    if needed and gpus.driver_major is not None and gpus.driver_major >= needed:
        groups = ",".join(map(str, os.getgroups()))
        return (f"the driver is new enough for this build, so it is not the driver: check that this user (uid "
                f"{os.getuid()}, groups {groups}) may open the device files ({device_modes(gpus.devices)}), and "
                "the GPU's state (nvidia-smi).")
    amis = [f"{name} (driver {driver})" for name, driver in sorted(INFERENCE_AMI_DRIVERS.items(), key=lambda i: i[1])
            if needed and driver >= needed]
    if not amis:
        newest = max(INFERENCE_AMI_DRIVERS.items(), key=lambda item: item[1])
        return (f"no SageMaker inference AMI has a driver that runs this build (the newest here, {newest[0]}, has "
                f"{newest[1]}): {rebuild}.")
    return (f"on an endpoint, set the production variant's InferenceAmiVersion to {' or '.join(amis)} (`launch.py "
            f"deploy` sets {GPU_INFERENCE_AMI} on ml.g*/ml.p*); a training host's driver cannot be chosen: use "
            f"another instance type, or {rebuild}.")


def device_modes(devices):
    """'/dev/nvidia0 0o660 gid 44, ...' for the message: who may open the GPUs' device files."""
    modes = []
    for device in devices[:2]:
        try:
            info = os.stat(device)
            modes.append(f"{device} {oct(info.st_mode & 0o777)} uid {info.st_uid} gid {info.st_gid}")
        except OSError as error:
            modes.append(f"{device} ({error.strerror})")
    return ", ".join(modes) or "none seen"


def unusable_message(gpus, torch_version, cuda_version, reason=None, who=None):
    """One paragraph (well under SageMaker's 1,024-character failure reason) naming the driver, the build and the fix."""
    seen = f"driver {gpus.driver_version}" if gpus.driver_version else "driver version unknown"
    if gpus.devices:
        seen += f", {len(gpus.devices)} device(s) {' '.join(gpus.devices[:4])}"
    if gpus.toolkit_count:
        seen += f", {SM_NUM_GPUS}={gpus.toolkit_count}"
    needed = driver_needed(cuda_version)
    if cuda_version:
        build = f"a CUDA {cuda_version} build, which needs NVIDIA driver {needed} or newer" if needed else \
            f"a CUDA {cuda_version} build"
    else:
        build = "a CPU-only build"
    why = ""
    if gpus.driver_major is not None:
        runs = newest_cuda(gpus.driver_major)
        why = f" Driver {gpus.driver_major} runs CUDA {runs} at most." if runs else \
            f" Driver {gpus.driver_major} is older than any CUDA 11 runtime needs."
    user = f" ({who})" if who else ""
    because = f" ({reason})" if reason else ""
    return (f"NVIDIA GPUs are present ({seen}) but torch cannot use them{user}{because}: the image's torch "
            f"{torch_version} is {build}.{why} It stops rather than run 10-50 times slower on the CPU. Fix: "
            f"{fix_advice(gpus, cuda_version)} To run on the CPU anyway, set {ALLOW_CPU_ENV}=true.")


def cuda_failure():
    """None when torch can run a CUDA operation in this process, else why not, in torch's words."""
    import torch

    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    try:
        torch.ones(1, device="cuda").add_(1).item()
    except Exception as error:  # noqa: BLE001  (any failure here means: no GPU for this process)
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return None


def require_usable_gpu(environ=None, exercise=False, who=None):
    """Raise GpuUnusableError where GPUs are present and torch cannot use them; return the probe otherwise.
    `exercise`: run a CUDA operation too (it creates a CUDA context: for processes that use the GPU anyway, or
    that exit right after); else torch.cuda.is_available() decides. `who` names the process in the message."""
    env = os.environ if environ is None else environ
    gpus = probe(env)
    if not gpus.present or env.get(ALLOW_CPU_ENV, "").lower() == "true":
        return gpus
    import torch

    if not torch.cuda.is_available():
        reason = "torch.cuda.is_available() is False"
    else:
        reason = cuda_failure() if exercise else None
    if reason:
        raise GpuUnusableError(unusable_message(gpus, torch.__version__, torch.version.cuda, reason, who))
    return gpus


def main():
    """`python -m image_classifier.cuda_check`: exit 1 with the message where this user cannot use the GPUs."""
    import getpass

    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry
        name = "?"
    try:
        require_usable_gpu(exercise=True, who=f"user {name}, uid {os.getuid()}")
    except GpuUnusableError as error:
        print(error, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
