"""The model server's settings: every default in one place, each overridable by an environment variable.

SageMaker's own variables are used where one exists (port, workers, timeout, payload cap); the rest are
ours, prefixed `IMAGE_CLASSIFIER_`. `load()` reads and checks them all at once: `serve` calls it before
it starts anything, so a bad value stops the server with a message naming the variable, instead of every
request failing with a 500 while `/ping` says 200. Importing this module is cheap (no torch, no toolkit).
"""
import math
import os
from dataclasses import dataclass

from .. import contract
from . import resources
from ..images import DEFAULT_MAX_PIXELS, PICTURE_FORMATS  # noqa: F401  (one definition, used by the handler)

# Content types of the serving contract (DESIGN section 4).
JSON = "application/json"
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
ACCEPTED_CONTENT_TYPES = RAW_IMAGE_TYPES + (JSON,)
ACCEPTABLE_RESPONSE_TYPES = (JSON, "application/*", "*/*")
# Deeper JSON than {"instances": [{"b64": ...}]} needs is refused before parsing (Python's parser
# would raise RecursionError on a few thousand levels).
MAX_JSON_DEPTH = 16

# The handler service module MMS loads in each worker (it must define exactly one class).
HANDLER_SERVICE = "image_classifier.serving.handler_service"
# MMS's management API listens on this unix socket in serve's private runtime folder, never on TCP:
# whoever reaches the inference port must not be able to register, unregister or scale models.
MANAGEMENT_SOCKET = "management.sock"

# The port, bind address, payload cap and top-k default are SageMaker's contract (contract.py).
MAX_PORT = 32766  # MMS 1.1.11 refuses ports >= 32767 ("Invalid port number"), e.g. Linux's ephemeral ones
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"  # default: default_workers()
TORCH_THREADS_ENV = "IMAGE_CLASSIFIER_TORCH_THREADS"  # default: default_threads()
MAX_WORKERS = MAX_THREADS = 256
# On CPU, by default, one worker per core, and the workers share the cores request by request
# (core_share.py): a request runs on every core while the other workers are idle, on cores / workers
# threads while they are busy. Measured on 2 cores (docs/BENCHMARKS.md): a lone request as fast as one
# worker with both cores, the throughput of one single-thread worker per core. With
# IMAGE_CLASSIFIER_SHARE_CORES=false the split is fixed: one worker per CORES_PER_WORKER cores, each with
# that many threads (two workers of two threads each oversubscribe the cores and lose throughput).
SHARE_CORES_ENV, DEFAULT_SHARE_CORES = "IMAGE_CLASSIFIER_SHARE_CORES", True
CORES_PER_WORKER = 2
# Memory: the default workers are as many as the cores allow and the memory holds (memory_workers). One
# ResNet-50 worker (torch + OpenVINO, its engine compiled at both thread counts) holds WORKER_MEMORY_MIB of
# RSS: 2,458 MiB for the two default workers in bench/bench_serving.py (docs/BENCHMARKS.md, 2026-12-04),
# 1,225-1,227 MiB each again on 2026-12-06 (docker, 2 cores). About 680 MiB of it is the worker's own
# (anonymous); the rest are shared libraries, which the kernel charges once: that slack is a picture at the
# pixel cap's room (0.2-0.6 GB while converting).
WORKER_MEMORY_MIB = 1229
# serve itself, which stays as the supervisor after checking the artifact and exporting the engine: 766 MiB
# RSS (1,079 MiB at its peak, before any worker starts), measured in the container on 2026-12-06.
SUPERVISOR_MEMORY_MIB = 800
# The Java frontend beyond its heap (metaspace, code, threads, netty's direct buffers): 130 MiB of RSS in
# all after 80 requests (2026-12-06). Its heap (-Xmx) is a sixteenth of the memory, within the bounds.
JVM_NATIVE_MIB = 200
JVM_HEAP_MIB_MIN, JVM_HEAP_MIB_MAX = 256, 1024
# The memory the server may use (MiB), where the platform knows it better than the container sees it:
# launch.py sets it to a serverless endpoint's memory size. Unset: the container's cgroup limit, else the
# host's RAM (resources.py); set, the smaller of it and those.
MEMORY_ENV = "IMAGE_CLASSIFIER_MEMORY_MB"
# Set by serve for its workers: the folder of the workers' busy-lock files (core_share.py).
CORE_SHARE_DIR_ENV = "IMAGE_CLASSIFIER_CORE_SHARE_DIR"
# Seconds, not the toolkit's SAGEMAKER_MODEL_SERVER_TIMEOUT (read as minutes). MMS applies it to model
# loading too, so the default is well above the load time measured at start.
TIMEOUT_ENV, MIN_TIMEOUT_SECONDS = "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", 60
# SageMaker's real-time endpoints accept 6 MB bodies (its front end answers bigger ones itself). The
# handler refuses bodies over the cap with a JSON 413; MMS is told to take bodies up to
# MMS_BODY_LIMIT_FACTOR x the cap so that a client sending a body a little too big gets that answer
# (MMS's own refusal resets the connection while the client is still sending).
MMS_BODY_LIMIT_FACTOR = 4
MAX_PIXELS_ENV = "IMAGE_CLASSIFIER_MAX_PIXELS"  # per picture, as declared in its header
# Pixels per request, all pictures together, each charged at its declared size (a drafted JPEG is still
# read whole: every scan covers every pixel) or at the size it is resized up to, when smaller than the
# model's input (images.charged_pixels). A worker holds one full-size picture at a time (<= MAX_PIXELS:
# about 0.2-0.6 GB while converting), so memory stays bounded whatever the budget; the budget bounds the
# CPU a request may take (decoding costs about 10 ms per megapixel here). 100 MP: two pictures at the
# cap, ~2 s of decoding.
PIXEL_BUDGET_ENV, DEFAULT_PIXEL_BUDGET = "IMAGE_CLASSIFIER_PIXEL_BUDGET", 100_000_000
# Pictures per JSON request. Unset, each worker derives it when it loads the model (handler.batch_limit):
# as many pictures as its forward passes take within BATCH_SECONDS on this instance, at most
# DEFAULT_MAX_BATCH. SageMaker ends a real-time invocation after INVOCATION_SECONDS; a quarter of it leaves
# room for decoding (the pixel budget), a busier host than at load time, and a request queued behind another.
MAX_BATCH_ENV, DEFAULT_MAX_BATCH = "IMAGE_CLASSIFIER_MAX_BATCH", 32
INVOCATION_SECONDS = 60
BATCH_SECONDS_ENV, DEFAULT_BATCH_SECONDS = "IMAGE_CLASSIFIER_BATCH_SECONDS", INVOCATION_SECONDS // 4
FORWARD_BATCH_ENV, DEFAULT_FORWARD_BATCH = "IMAGE_CLASSIFIER_FORWARD_BATCH", 16  # pictures per forward pass
TOP_K_ENV, MAX_TOP_K = "IMAGE_CLASSIFIER_TOP_K", 1000
# Inference optimisations (conv+batch-norm folding, channels_last); `false` serves the plain eager model.
OPTIMIZE_ENV, DEFAULT_OPTIMIZE = "IMAGE_CLASSIFIER_OPTIMIZE", True
# The inference engine (engine.py): auto = on a CPU, the artifact's int8 model when its training job's accuracy
# gate kept one (openvino-int8, about half the fp32 forward), else OpenVINO fp32 (a third faster than eager,
# docs/BENCHMARKS.md); torch (fp16, channels_last) on a GPU. openvino-int8 asks for int8 (fp32 OpenVINO when
# the artifact has none), openvino for fp32 OpenVINO.
TORCH_ENGINE, OPENVINO_ENGINE, INT8_ENGINE = "torch", "openvino", "openvino-int8"
ENGINE_ENV, ENGINES, DEFAULT_ENGINE = ("IMAGE_CLASSIFIER_ENGINE", ("auto", TORCH_ENGINE, OPENVINO_ENGINE, INT8_ENGINE),
                                       "auto")
# At load each worker compares its engine's logits with eager fp32 on a fixed input: past this difference
# (relative to the largest logit) it serves with torch. OpenVINO fp32 differs by ~1e-5, torch fp16 by ~1e-3.
# int8 answers differ more than any such tolerance: it is compared by top-1 agreement with fp32 on the same
# fixed input, at least INT8_MIN_AGREEMENT of its pictures (its accuracy was measured by the training job).
ENGINE_TOLERANCE_ENV, DEFAULT_ENGINE_TOLERANCE = "IMAGE_CLASSIFIER_ENGINE_TOLERANCE", 0.01
INT8_MIN_AGREEMENT = 0.75
# Set by serve for its workers: the folder holding the model it exported once for the engine.
ENGINE_EXPORT_ENV = "IMAGE_CLASSIFIER_ENGINE_EXPORT"
# Every response names the engine that answered it.
ENGINE_HEADER = "X-Image-Classifier-Engine"
# The Java frontend's options; unset: jvm_args() (container support on, the heap from the memory).
JVM_ARGS_ENV = "SAGEMAKER_MODEL_SERVER_VMARGS"
# Where serve keeps its MMS config, logs, pid file and sockets (a fresh folder under it).
RUNTIME_DIR_ENV = "IMAGE_CLASSIFIER_RUNTIME_DIR"
# How long serve waits for MMS to stop on SIGTERM before killing it.
STOP_GRACE_SECONDS = 10
# serve exits (non-zero, so that /ping stops answering: serve.py says what AWS documents of that) when no model
# worker has been ready for this long: MMS's /ping answers 200 without any. The default is well inside
# SageMaker's startup health check (minutes) and well above a crashed worker's reload; it grows with a slow model load
# (workerless_seconds). Workers are polled every WORKER_POLL_SECONDS through the management socket.
WORKERLESS_SECONDS_ENV, DEFAULT_WORKERLESS_SECONDS = "IMAGE_CLASSIFIER_WORKERLESS_SECONDS", 45
WORKER_POLL_SECONDS = 1.0
# When serve runs as root, MMS and its workers (which parse untrusted bytes with libjpeg, libtiff,
# libwebp) run as this user. The image creates it; where the default does not exist (outside the image),
# serve runs MMS as it was started; a user named in the variable must exist.
SERVER_USER_ENV, DEFAULT_SERVER_USER = "IMAGE_CLASSIFIER_SERVER_USER", "model-server"
# Groups the server user keeps for GPU device files (/dev/dri, some /dev/nvidia* set-ups), where they exist.
DEVICE_GROUPS = ("video", "render")


class SettingsError(ValueError):
    """One or more settings are invalid; the message names each variable and what it must be."""


def env_int(name, default, minimum=1, environ=None, maximum=None):
    """An integer setting; a clear ValueError naming the variable when it is not one."""
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())  # Python's own syntax: 200_000_000 reads as 200000000
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        limit = f"between {minimum:,} and {maximum:,}" if maximum is not None else f"at least {minimum:,}"
        raise ValueError(f"{name}={value!r} must be {limit}")
    return number


def env_bool(name, default, environ=None):
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return default
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if value.strip().lower() not in words:
        raise ValueError(f"{name}={value!r} must be true or false")
    return words[value.strip().lower()]


def env_choice(name, default, choices, environ=None):
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return default
    if value.strip().lower() not in choices:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value.strip().lower()


def env_float(name, default, minimum=0.0, environ=None):
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if not number > minimum:
        raise ValueError(f"{name}={value!r} must be above {minimum}")
    return number


def cpu_count():
    """Cores this process may use: a container's CPU set, within its CPU quota (resources.py), not the host's."""
    return resources.read().cores


def jvm_heap_mib(memory_mib):
    """The Java frontend's heap: a sixteenth of the memory, within JVM_HEAP_MIB_MIN..JVM_HEAP_MIB_MAX."""
    if not memory_mib:
        return JVM_HEAP_MIB_MIN
    return min(JVM_HEAP_MIB_MAX, max(JVM_HEAP_MIB_MIN, memory_mib // 16))


def jvm_args(memory_mib):
    """The JVM's options. An explicit heap from the same memory figure the workers are counted from (which may be
    the serverless size the launcher sent, unseen by the JVM); container support on, so that the JVM's own
    thread pools follow the CPU quota (the toolkit's default turns it off)."""
    return f"-XX:+UseContainerSupport -Xmx{jvm_heap_mib(memory_mib)}m"


def memory_workers(memory_mib):
    """Workers the memory holds next to serve and the Java frontend (at least 1); None when it is unknown."""
    if not memory_mib:
        return None
    reserved = SUPERVISOR_MEMORY_MIB + jvm_heap_mib(memory_mib) + JVM_NATIVE_MIB
    return max(1, (memory_mib - reserved) // WORKER_MEMORY_MIB)


def default_workers(gpus, cores, share_cores=DEFAULT_SHARE_CORES, memory_mib=None):
    """One per GPU; on CPU one per core when they share the cores, else one per CORES_PER_WORKER cores; never
    more than the memory holds (memory_workers)."""
    if gpus > 0:
        wanted = gpus
    else:
        wanted = cores if share_cores else max(1, cores // CORES_PER_WORKER)
    return min(wanted, memory_workers(memory_mib) or wanted)


def default_threads(cores, workers, share_cores=False):
    """Threads per worker: every core when the workers share them (a lone request uses them all), else so
    that workers x threads = cores (more only oversubscribes)."""
    return cores if share_cores else max(1, cores // workers)


def narrow_threads(cores, workers, threads):
    """The threads of a request while other workers are busy: its share of the cores, at most `threads`."""
    return max(1, min(threads, cores // workers))


def workerless_seconds(load_seconds):
    """Default seconds without a ready worker before serve gives up: a crashed worker must reload first."""
    return max(DEFAULT_WORKERLESS_SECONDS, math.ceil(2 * load_seconds) + 15)


def response_timeout(load_seconds):
    """Seconds MMS waits for a worker: above the load time, with margin for a slow, busy host."""
    return max(MIN_TIMEOUT_SECONDS, math.ceil(3 * load_seconds) + 30)


@dataclass(frozen=True)
class ServingSettings:
    port: int
    bind_address: str
    workers: int
    torch_threads: int
    timeout_seconds: int
    payload_cap_mb: int
    max_pixels: int
    pixel_budget: int
    max_batch: object  # int, or None: derived from a timed forward pass when the model is loaded
    batch_seconds: float
    forward_batch: int
    top_k: int
    optimize: bool
    engine: str
    engine_tolerance: float
    jvm_args: str
    share_cores: bool = False  # on CPU only (core_share.py)
    narrow_threads: int = 1  # threads per request while other workers are busy, when sharing
    workerless_seconds: int = DEFAULT_WORKERLESS_SECONDS
    server_user: str = DEFAULT_SERVER_USER
    memory_mib: int = 0  # the memory the server may use (0: unknown), which bounds the default workers
    memory_source: str = "unknown"  # where memory_mib comes from

    @property
    def cores_shared(self):
        """Whether requests take fewer threads while other workers are busy (core_share.py)."""
        return self.share_cores and self.workers > 1 and self.narrow_threads < self.torch_threads

    @property
    def payload_cap_bytes(self):
        return self.payload_cap_mb * 1024 * 1024

    @property
    def address(self):
        return f"http://{self.bind_address}:{self.port}"


def load(environ=None, gpus=0, cores=None,
         load_seconds=0.0,  # pragma: no mutate - 0 and 1 s give the same timeouts (their floors, 60 and 45 s, hold)
         memory_mib=None, found=None):
    """Every setting, checked; SettingsError lists all the bad ones at once. `cores` and `memory_mib` default to
    what the container may use (`found`, else resources.read())."""
    env = os.environ if environ is None else environ
    if cores is None or memory_mib is None:
        found = found or resources.read()
    cores = cores or found.cores
    memory_source = "given" if memory_mib is not None else found.memory_source
    memory_mib = found.memory_mib if memory_mib is None else memory_mib
    problems, values = [], {}

    def read(key, function, name, default, *args, **kwargs):
        try:
            values[key] = function(name, default, *args, environ=env, **kwargs)
        except ValueError as error:
            problems.append(str(error))
            values[key] = default  # what follows is derived from the default, so that every bad value is named

    read("port", env_int, contract.PORT_ENV, contract.SERVING_PORT, maximum=MAX_PORT)
    read("share_cores", env_bool, SHARE_CORES_ENV, DEFAULT_SHARE_CORES)
    values["share_cores"] = bool(values["share_cores"]) and gpus == 0
    read("memory_mib", env_int, MEMORY_ENV, None, minimum=256)
    if values["memory_mib"] is not None and (not memory_mib or values["memory_mib"] < memory_mib):
        memory_mib, memory_source = values["memory_mib"], MEMORY_ENV
    values["memory_mib"] = memory_mib
    read("workers", env_int, WORKERS_ENV, default_workers(gpus, cores, values["share_cores"], memory_mib),
         maximum=MAX_WORKERS)
    read("torch_threads", env_int, TORCH_THREADS_ENV,
         default_threads(cores, values["workers"], values["share_cores"]), maximum=MAX_THREADS)
    values["narrow_threads"] = narrow_threads(cores, values["workers"], values["torch_threads"])
    read("timeout_seconds", env_int, TIMEOUT_ENV, response_timeout(load_seconds))
    read("payload_cap_mb", env_int, contract.PAYLOAD_CAP_ENV, contract.DEFAULT_PAYLOAD_CAP_MB,
         maximum=contract.MAX_PAYLOAD_CAP_MB)
    read("max_pixels", env_int, MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)
    read("pixel_budget", env_int, PIXEL_BUDGET_ENV, DEFAULT_PIXEL_BUDGET)
    read("max_batch", env_int, MAX_BATCH_ENV, None)
    read("batch_seconds", env_int, BATCH_SECONDS_ENV, DEFAULT_BATCH_SECONDS)
    read("forward_batch", env_int, FORWARD_BATCH_ENV, DEFAULT_FORWARD_BATCH)
    read("top_k", env_int, TOP_K_ENV, contract.DEFAULT_TOP_K, maximum=MAX_TOP_K)
    read("optimize", env_bool, OPTIMIZE_ENV, DEFAULT_OPTIMIZE)
    read("workerless_seconds", env_int, WORKERLESS_SECONDS_ENV, workerless_seconds(load_seconds))
    read("engine", env_choice, ENGINE_ENV, DEFAULT_ENGINE, ENGINES)
    read("engine_tolerance", env_float, ENGINE_TOLERANCE_ENV, DEFAULT_ENGINE_TOLERANCE)
    if not problems and values["pixel_budget"] < values["max_pixels"]:
        problems.append(f"{PIXEL_BUDGET_ENV}={values['pixel_budget']:,} is below {MAX_PIXELS_ENV}="
                        f"{values['max_pixels']:,}: a picture under the per-picture cap could never be served")
    if problems:
        raise SettingsError("invalid serving settings: " + "; ".join(problems))
    return ServingSettings(bind_address=env.get(contract.BIND_ADDRESS_ENV) or contract.DEFAULT_BIND_ADDRESS,
                           jvm_args=env.get(JVM_ARGS_ENV) or jvm_args(memory_mib), memory_source=memory_source,
                           server_user=env.get(SERVER_USER_ENV) or DEFAULT_SERVER_USER, **values)
