"""Inference engines: what runs the network's forward pass in a serving worker.

- `torch`: eager PyTorch, with batch norms folded into the convolutions and channels_last; on a GPU also
  in half precision (fp16: tensor cores on every SageMaker GPU, T4 included, which has no bf16).
- `openvino`: the network converted to OpenVINO (fp32), run by OpenVINO's CPU runtime. On this kind of CPU
  it cuts the forward by about a third against eager (docs/BENCHMARKS.md). OpenVINO and not ONNX Runtime:
  onnxruntime needs protobuf >= 4.25, smdebug pins 3.20 (DESIGN section 5); OpenVINO needs no protobuf and
  converts a torch module directly.
- `openvino-int8`: the int8 model the training job made with NNCF and kept after measuring its accuracy
  (training/quantize.py), run by the same runtime: about half the fp32 forward.
- `auto`: on a CPU, int8 when the artifact holds an accepted one, else openvino when it is installed; torch
  on a GPU (OpenVINO's GPU plugin is for Intel GPUs).

`serve` prepares the OpenVINO engines once (`export`): the fp32 model from the artifact (a job that quantized
wrote it there) or converted now (artifacts from before), the int8 model copied beside it, and the fixed
check input with eager fp32's logits on it. A worker serving with OpenVINO compiles that folder and checks
its answers against the saved logits (`load_export`): it never imports torch or torchvision (about 0.5 GB
of RSS and 2 s of start each). Engines take and return NumPy arrays: (N, 3, H, W) float32 normalised
pictures -> (N, classes) float32 logits.

Never silently wrong: each worker compares its engine with eager fp32 on a fixed input (fp32 engines: logits
within the tolerance and every top-1 the same; int8: top-1 agreement) and otherwise serves the next engine
down (int8 -> fp32 OpenVINO -> torch).
"""
import contextlib
import ctypes
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import settings

log = logging.getLogger(__name__)

OPENVINO_MODEL = "model.xml"  # in the export folder, beside its weights (model.bin)
INT8_MODEL = "model-int8.xml"  # the artifact's int8 model, copied there (model-int8.bin)
REFERENCE_FILE = "reference.npz"  # the check input and eager fp32's logits on it, for the lean workers
EXPORTED_FILES = {settings.OPENVINO_ENGINE: OPENVINO_MODEL, settings.INT8_ENGINE: INT8_MODEL}
# A fixed input for the load-time check: the same pictures every time, unlike anything a model has
# learnt to ignore (normalised pixels are roughly standard normal).
CHECK_SEED, CHECK_BATCH = 1234, 4


@dataclass
class Engine:
    name: str  # the engine serving: settings.TORCH_ENGINE, OPENVINO_ENGINE or INT8_ENGINE
    forward: object  # normalised input batch (N, 3, H, W) float32 array -> float32 logits array (N, classes)
    at_threads: object = None  # threads -> the same forward on that many CPU threads (core_share.py)


def openvino_available():
    try:
        import_openvino()
        return True
    except ImportError:
        return False


def import_openvino():
    # OpenVINO's converter reports usage to Intel through openvino-telemetry unless the package is missing
    # (it then uses its own no-op stub): a model server sends nothing, so the package is hidden from it.
    sys.modules.setdefault("openvino_telemetry", None)  # pragma: no mutate - None is setdefault's default too
    import openvino

    return openvino


def resolve(requested, device, int8=False):
    """The engine to serve with: `requested` (settings.ENGINES) on `device` ("cpu", "cuda:0", a torch.device),
    as far as available; `int8`: the artifact holds an int8 model its training job accepted."""
    on_gpu = str(device).startswith("cuda")
    if requested == settings.TORCH_ENGINE:
        return settings.TORCH_ENGINE
    if requested != "auto" and on_gpu:
        log.warning("%s=%s: OpenVINO does not run on NVIDIA GPUs; serving with torch on %s", settings.ENGINE_ENV,
                    requested, device)
        return settings.TORCH_ENGINE
    if not openvino_available():
        if requested != "auto":
            log.warning("%s=%s but openvino is not installed; serving with torch", settings.ENGINE_ENV, requested)
        return settings.TORCH_ENGINE
    if on_gpu:
        return settings.TORCH_ENGINE
    if requested == settings.OPENVINO_ENGINE:
        return settings.OPENVINO_ENGINE
    if not int8 and requested == settings.INT8_ENGINE:
        log.warning("%s=%s but the artifact holds no accepted int8 model (model.json's quantization record): "
                    "serving OpenVINO fp32", settings.ENGINE_ENV, requested)
    return settings.INT8_ENGINE if int8 else settings.OPENVINO_ENGINE


def check_pixels(image_size):
    """The load-time check's fixed input: CHECK_BATCH pictures of standard normal noise."""
    generator = np.random.default_rng(CHECK_SEED)
    return generator.standard_normal((CHECK_BATCH, 3, image_size, image_size)).astype(np.float32)


def difference(logits, reference):
    """The largest logit difference relative to the largest reference logit (scale-free), and whether
    every top-1 class agrees."""
    logits, reference = np.asarray(logits, np.float32), np.asarray(reference, np.float32)
    relative = float(np.abs(logits - reference).max() / max(float(np.abs(reference).max()), 1e-12))
    return relative, bool((logits.argmax(1) == reference.argmax(1)).all())


def agreement(logits, reference):
    """The share of pictures whose top-1 class is the same in both."""
    return float((np.asarray(logits).argmax(1) == np.asarray(reference).argmax(1)).mean())


def judge(name, logits, reference, tolerance):
    """(passes, what the check found): fp32 engines by logit difference and top-1, int8 by top-1 agreement."""
    if name == settings.INT8_ENGINE:
        share = agreement(logits, reference)
        return share >= settings.INT8_MIN_AGREEMENT, (
            f"top-1 agreement with eager fp32 {share:.0%}, at least {settings.INT8_MIN_AGREEMENT:.0%} needed")
    relative, same_top1 = difference(logits, reference)
    return relative <= tolerance and same_top1, (
        f"largest logit difference {relative:.2e} of the largest logit, tolerance {tolerance:.0e}; top-1 "
        f"{'agrees' if same_top1 else 'DIFFERS'}")


# ------------------------------------------------------------------------------------------ torch
def torch_forward(network, example, optimize=True):
    """(network, forward) for inference, on torch tensors. Optimised: each batch norm folded into the
    convolution before it (one pass less over the activations per layer) and channels_last, which oneDNN's CPU
    convolutions and GPUs' tensor cores prefer; on a GPU also fp16. Measured in docs/BENCHMARKS.md.
    (torch.utils.mkldnn and TorchScript freezing were faster still on CPU, but both stand on the deprecated
    torch.jit.)"""
    if not optimize:
        return network, network
    import torch
    from torch.fx.experimental.optimization import fuse

    half = example.device.type == "cuda"
    network = fuse(network).eval().to(memory_format=torch.channels_last)
    if half:
        network = network.half()

    def forward(inputs):
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        return network(inputs.half() if half else inputs).float()

    with torch.inference_mode():
        forward(example)  # first-call set-up happens here, not in a request
    return network, forward


def torch_engine_forward(forward, device, threads=None):
    """A torch forward as an engine's (arrays in and out, on `device`), on `threads` torch threads when given
    (the worker's own count is restored after each call)."""
    import torch

    def run(inputs):
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return forward(torch.from_numpy(np.ascontiguousarray(inputs)).to(device)).float().cpu().numpy()
        finally:
            torch.set_num_threads(previous)

    return run


def eager_logits(network, pixels):
    """Eager fp32 logits of `network` (on its device) for an array of pictures."""
    import torch

    device = next(network.parameters()).device
    with torch.inference_mode():
        return network(torch.from_numpy(pixels).to(device)).float().cpu().numpy()


# --------------------------------------------------------------------------------------- openvino
def convert_openvino(network, image_size):
    """The eager network as an OpenVINO model of any batch size, its pictures' size fixed (the CPU plugin picks
    its kernels for that size when it compiles). OpenVINO traces it on zeros of that shape."""
    import torch

    openvino = import_openvino()
    with torch.inference_mode():
        return openvino.convert_model(network.cpu().eval(), input=[(-1, 3, image_size, image_size)])


class _SignalStack(ctypes.Structure):  # stack_t of sigaltstack(2)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def same_signal_stack():
    """Puts back the calling thread's alternate signal stack after the block. OpenVINO's CPU plugin installs
    a stack of its own when it compiles a model and reinstalls the one it found when that model is freed:
    two models freed in the order they were made leave the thread on the first one's stack, unmapped by
    then, and the next signal with a Python handler (Python installs them SA_ONSTACK: SIGTERM in serve,
    SIGCHLD after a torch DataLoader) kills the process with SIGSEGV. With the thread's own stack put back
    after each compile, every model finds that one, and reinstalls it, whatever the order."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    saved = _SignalStack()
    if libc is None or libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)


def openvino_forward(converted, threads):
    """forward() running `converted` (an openvino.Model or the path of a saved one, fp32 or int8) on the CPU,
    tuned for one request at a time with `threads` threads, as a worker serves."""
    openvino = import_openvino()
    core = openvino.Core()
    with same_signal_stack():
        compiled = core.compile_model(converted, "CPU", {  # a Model, or the path of a saved one
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            # bf16 on AMX/AVX512-BF16 CPUs would change the answers (an int8 model's quantized layers run in
            # int8 whatever this says; the rest stays fp32)
            "INFERENCE_PRECISION_HINT": "f32",
            # each MMS worker is a process of its own: pinned (the default), every worker binds to the same
            # first cores
            "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()

    def forward(inputs):  # an array of any float type and layout: OpenVINO converts it to the model's float32
        return request.infer({0: inputs})[0].copy()  # the request reuses its output buffer

    forward.compiled = compiled  # for its settings
    return forward


def openvino_engine(name, model_path, threads):
    return Engine(name, openvino_forward(model_path, threads),
                  lambda other_threads: openvino_forward(model_path, other_threads))


def copy_model(xml, folder, name):
    """Copy an OpenVINO model (its .xml and .bin) into `folder` as `name`; returns the copy's path."""
    target = Path(folder) / name
    shutil.copyfile(xml, target)
    shutil.copyfile(Path(xml).with_suffix(".bin"), target.with_suffix(".bin"))
    return target


def export(network, image_size, folder, saved=None, int8=None, weights=""):
    """Prepare the OpenVINO engines in `folder` (serve does this once per start): the fp32 model (the
    artifact's `saved` one, else `network` converted now with full fp32 weights: the default fp16 compression
    would change the answers), the artifact's `int8` model when given, and the check input with eager fp32's
    logits on it and the `weights`' fingerprint (model.fingerprint). Returns the fp32 model's path."""
    openvino = import_openvino()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if saved is not None:
        path = copy_model(saved, folder, OPENVINO_MODEL)
    else:
        path = folder / OPENVINO_MODEL
        openvino.save_model(convert_openvino(network, image_size), str(path),
                            compress_to_fp16=False)  # pragma: no mutate - pybind11 reads None as False too
    if int8 is not None:
        copy_model(int8, folder, INT8_MODEL)
    pixels = check_pixels(image_size)
    np.savez(folder / REFERENCE_FILE, pixels=pixels, logits=eager_logits(network, pixels), weights=np.str_(weights))
    return path


# ------------------------------------------------------------------------------------------- load
def build(name, network, image_size, threads, exported=None, int8_model=None):
    """The Engine `name` for `network` (eager, eval mode; OpenVINO runs on the CPU whatever its device).
    openvino uses the `exported` model when its file exists, else converts now; openvino-int8 the exported copy,
    else the artifact's `int8_model`."""
    saved = Path(exported) / EXPORTED_FILES[name] if exported and name in EXPORTED_FILES else None
    if saved is not None and saved.is_file():
        return openvino_engine(name, saved, threads)
    if name == settings.OPENVINO_ENGINE:
        converted = convert_openvino(network, image_size)
        return Engine(name, openvino_forward(converted, threads),
                      lambda other_threads: openvino_forward(converted, other_threads))
    if name == settings.INT8_ENGINE and int8_model is not None:
        return openvino_engine(name, Path(int8_model), threads)
    raise ValueError(f"no engine {name!r}")


def checked(name, network, image_size, threads, tolerance, exported=None, int8_model=None):
    """Engine `name` if its answers on the fixed input pass the check against eager fp32 (`judge`);
    otherwise None, with the reason logged. `network` is not modified."""
    started = time.monotonic()
    pixels = check_pixels(image_size)
    try:
        engine = build(name, network, image_size, threads, exported, int8_model)
        passes, found = judge(name, engine.forward(pixels), eager_logits(network, pixels), tolerance)
    except Exception as error:  # noqa: BLE001  (any failure of an optional engine means: the next one down)
        log.error("The %s engine failed to load (%s: %s)", name, type(error).__name__, error)
        return None
    return _verdict(name, engine, passes, found, started)


def _verdict(name, engine, passes, found, started):
    if not passes:
        log.error("The %s engine's answers differ from eager PyTorch on the load-time check (%s): not serving "
                  "with it", name, found)
        return None
    log.info("The %s engine matches eager PyTorch on the load-time check (%s; %.1f s to load)", name, found,
             time.monotonic() - started)
    return engine


def exported_engines(folder):
    """The engines serve's export folder holds ready for a lean worker (int8 first), [] when it has none."""
    folder = Path(folder) if folder else None
    if folder is None or not (folder / REFERENCE_FILE).is_file():
        return []
    return [name for name in (settings.INT8_ENGINE, settings.OPENVINO_ENGINE) if (folder / EXPORTED_FILES[name]).is_file()]


def load_export(name, folder, threads, tolerance, weights):
    """Engine `name` from serve's export `folder`, checked against the eager fp32 logits saved there, without
    torch; None (the reason logged) when it fails or the export was made from other `weights` (fingerprint)."""
    started = time.monotonic()
    try:
        reference = np.load(Path(folder) / REFERENCE_FILE)
        if str(reference["weights"]) != weights:
            log.error("The export in %s was made from other weights than the artifact's: it would differ from "
                      "eager PyTorch", folder)
            return None
        engine = openvino_engine(name, Path(folder) / EXPORTED_FILES[name], threads)
        passes, found = judge(name, engine.forward(reference["pixels"]), reference["logits"], tolerance)
    except Exception as error:  # noqa: BLE001  (any failure of an optional engine means: the next one down)
        log.error("The %s engine failed to load from %s (%s: %s)", name, folder, type(error).__name__, error)
        return None
    return _verdict(name, engine, passes, found, started)


def load(requested, network, image_size, device, threads, tolerance, optimize=True, exported=None, int8_model=None):
    """(Engine, eager network used by torch) for serving: the requested engine when it is available and
    passes the load-time check (int8 falls back to OpenVINO fp32), else torch. `int8_model`: the artifact's
    accepted int8 model, if any."""
    import torch

    name = resolve(requested, device, int8=int8_model is not None)
    while name != settings.TORCH_ENGINE:
        engine = checked(name, network, image_size, threads, tolerance, exported, int8_model)
        if engine is not None:
            return engine, network
        name = settings.OPENVINO_ENGINE if name == settings.INT8_ENGINE else settings.TORCH_ENGINE
        log.warning("The engine did not pass its check: serving with %s instead", name)
    example = torch.zeros(
        1,  # pragma: no mutate - the warm-up pass's batch size changes no answer
        3, image_size, image_size, device=device)
    reference = network
    pixels = check_pixels(image_size)
    expected = eager_logits(network, pixels)
    network, forward = torch_forward(network, example, optimize)
    if optimize:  # half precision and folding change the numbers a little: check them the same way
        passes, found = judge(
            settings.TORCH_ENGINE,  # pragma: no mutate - judge sets only int8 apart: any other name is judged as fp32
            torch_engine_forward(forward, device)(pixels), expected, tolerance)
        if not passes:
            log.error("The optimised torch model differs from eager fp32 (%s): serving plain eager fp32", found)
            network, forward = reference, reference
    return Engine(settings.TORCH_ENGINE, torch_engine_forward(forward, device, threads),
                  lambda other: torch_engine_forward(forward, device, other)), network
