"""Inference engines: what runs the network's forward pass in a serving worker.

- `torch`: eager PyTorch, with batch norms folded into the convolutions and channels_last; on a GPU also
  in half precision (fp16: tensor cores on every SageMaker GPU, T4 included, which has no bf16).
- `openvino`: the network converted to OpenVINO once, run by OpenVINO's CPU runtime. On this kind of CPU
  it cuts the forward by about a third against eager (docs/BENCHMARKS.md). OpenVINO and not ONNX Runtime:
  onnxruntime needs protobuf >= 4.25, smdebug pins 3.20 (DESIGN section 5); OpenVINO needs no protobuf and
  converts a torch module directly.
- `auto`: openvino on a CPU when it is installed, torch on a GPU (OpenVINO's GPU plugin is for Intel GPUs).

The export happens at load, not at training: one path for every artifact (those trained before engines
existed too), the converted model always matches the runtime that serves it, and training needs nothing
of serving's. `serve` converts once, checks the result and saves it in its private runtime folder
(`export`); every worker compiles that copy (a fraction of a second) instead of converting again.

Never silently wrong: each worker compares its engine's logits with eager fp32 on a fixed input and, past
the tolerance, logs it and serves with torch.
"""
import contextlib
import ctypes
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import settings

log = logging.getLogger(__name__)

OPENVINO_MODEL = "model.xml"  # in the export folder, beside its weights (model.bin)
# A fixed input for the load-time check: the same pictures every time, unlike anything a model has
# learnt to ignore (normalised pixels are roughly standard normal).
CHECK_SEED, CHECK_BATCH = 1234, 2


@dataclass
class Engine:
    name: str  # the engine serving: "torch" or "openvino"
    forward: object  # normalised input batch (N, 3, H, W) on the model's device -> float32 logits (N, classes)
    at_threads: object = None  # threads -> the same forward on that many CPU threads (core_share.py)


class EngineMismatch(RuntimeError):
    """The engine's answers differ from eager PyTorch by more than the tolerance."""


def openvino_available():
    try:
        import_openvino()
        return True
    except ImportError:
        return False


def import_openvino():
    # OpenVINO's converter reports usage to Intel through openvino-telemetry unless the package is missing
    # (it then uses its own no-op stub): a model server sends nothing, so the package is hidden from it.
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def resolve(requested, device):
    """The engine to serve with: `requested` (auto|torch|openvino) on this device, as far as available."""
    on_gpu = torch.device(device).type == "cuda"
    if requested == "torch":
        return "torch"
    if requested == "openvino" and on_gpu:
        log.warning("%s=openvino: OpenVINO does not run on NVIDIA GPUs; serving with torch on %s",
                    settings.ENGINE_ENV, device)
        return "torch"
    if not openvino_available():
        if requested == "openvino":
            log.warning("%s=openvino but openvino is not installed; serving with torch", settings.ENGINE_ENV)
        return "torch"
    return "torch" if on_gpu else "openvino"


def check_input(image_size, device="cpu"):
    generator = torch.Generator().manual_seed(CHECK_SEED)
    return torch.randn(CHECK_BATCH, 3, image_size, image_size, generator=generator).to(device)


def difference(logits, reference):
    """The largest logit difference relative to the largest reference logit (scale-free), and whether
    every top-1 class agrees."""
    logits, reference = logits.float().cpu(), reference.float().cpu()
    relative = float((logits - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    return relative, bool((logits.argmax(1) == reference.argmax(1)).all())


# ------------------------------------------------------------------------------------------ torch
def torch_forward(network, example, optimize=True):
    """(network, forward) for inference. Optimised: each batch norm folded into the convolution before it
    (one pass less over the activations per layer) and channels_last, which oneDNN's CPU convolutions and
    GPUs' tensor cores prefer; on a GPU also fp16. Measured in docs/BENCHMARKS.md. (torch.utils.mkldnn and
    TorchScript freezing were faster still on CPU, but both stand on the deprecated torch.jit.)"""
    if not optimize:
        return network, network
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


def torch_at_threads(forward, threads):
    """`forward` on `threads` torch threads (the worker's own count is restored after each call)."""
    def run(inputs):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return forward(inputs)
        finally:
            torch.set_num_threads(previous)

    return run


# --------------------------------------------------------------------------------------- openvino
def convert_openvino(network, image_size):
    """The eager network as an OpenVINO model (any batch size)."""
    openvino = import_openvino()
    example = torch.zeros(1, 3, image_size, image_size)
    with torch.inference_mode():
        converted = openvino.convert_model(network.cpu().eval(), example_input=example,
                                           input=[(-1, 3, image_size, image_size)])
    return converted


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
    """forward() running `converted` (an openvino.Model or the path of a saved one) on the CPU, tuned for
    one request at a time with `threads` threads, as a worker serves."""
    openvino = import_openvino()
    core = openvino.Core()
    with same_signal_stack():
        compiled = core.compile_model(converted, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",  # bf16 on AMX/AVX512-BF16 CPUs would change the answers
            # each MMS worker is a process of its own: pinned (the default), every worker binds to the same
            # first cores
            "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()

    def forward(inputs):
        outputs = request.infer({0: inputs.detach().cpu().contiguous().numpy()})
        return torch.from_numpy(outputs[0].copy())  # the request reuses its output buffer

    forward.compiled = compiled  # for its settings
    return forward


def export(network, image_size, folder):
    """Convert `network` for OpenVINO and save it in `folder` (serve does this once per start); returns the
    saved model's path. Full fp32 weights: the default fp16 compression would change the answers."""
    openvino = import_openvino()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OPENVINO_MODEL
    openvino.save_model(convert_openvino(network, image_size), str(path), compress_to_fp16=False)
    return path


# ------------------------------------------------------------------------------------------- load
def build(name, network, image_size, device, threads, exported=None):
    """The Engine `name` for `network` (eager, eval mode, on `device`). openvino uses the `exported` model
    when its file exists, else converts now."""
    if name == "openvino":
        saved = Path(exported) / OPENVINO_MODEL if exported else None
        converted = str(saved) if saved is not None and saved.is_file() else convert_openvino(network, image_size)
        return Engine("openvino", openvino_forward(converted, threads),
                      lambda other_threads: openvino_forward(converted, other_threads))
    raise ValueError(f"no engine {name!r}")


def checked(name, network, image_size, device, threads, tolerance, exported=None):
    """Engine `name` if its logits on the fixed input are within `tolerance` (relative) of eager fp32 and
    agree on every top-1 class; otherwise None, with the reason logged. `network` is not modified."""
    started = time.monotonic()
    example = check_input(image_size, device)
    try:
        engine = build(name, network, image_size, device, threads, exported)
        with torch.inference_mode():
            relative, same_top1 = difference(engine.forward(example), network(example))
    except Exception as error:  # noqa: BLE001  (any failure of an optional engine means: serve with torch)
        log.error("The %s engine failed to load (%s: %s); serving with torch", name, type(error).__name__, error)
        return None
    if relative > tolerance or not same_top1:
        log.error("The %s engine's answers differ from eager PyTorch on the load-time check (largest logit "
                  "difference %.2e of the largest logit, tolerance %.0e; top-1 %s): serving with torch instead",
                  name, relative, tolerance, "agrees" if same_top1 else "DIFFERS")
        return None
    log.info("The %s engine matches eager PyTorch on the load-time check (largest logit difference %.2e of the "
             "largest logit, tolerance %.0e; %.1f s to load)", name, relative, tolerance, time.monotonic() - started)
    return engine


def load(requested, network, image_size, device, threads, tolerance, optimize=True, exported=None):
    """(Engine, eager network used by torch) for serving: the requested engine when it is available and
    passes the load-time check, else torch."""
    name = resolve(requested, device)
    if name != "torch":
        engine = checked(name, network, image_size, device, threads, tolerance, exported)
        if engine is not None:
            return engine, network
    example = torch.zeros(1, 3, image_size, image_size, device=device)
    reference = network
    with torch.inference_mode():
        expected = network(check_input(image_size, device))
    network, forward = torch_forward(network, example, optimize)
    if optimize:  # half precision and folding change the numbers a little: check them the same way
        with torch.inference_mode():
            relative, same_top1 = difference(forward(check_input(image_size, device)), expected)
        if relative > tolerance or not same_top1:
            log.error("The optimised torch model differs from eager fp32 (largest logit difference %.2e, tolerance "
                      "%.0e): serving plain eager fp32", relative, tolerance)
            network, forward = reference, reference
    return Engine("torch", torch_at_threads(forward, threads), lambda other: torch_at_threads(forward, other)), network
