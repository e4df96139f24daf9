"""The model server's settings: every default in one place, each overridable by an environment variable.

SageMaker's own variables are used where one exists (port, workers, timeout, payload cap); the rest are
ours, prefixed `IMAGE_CLASSIFIER_`. Importing this module is cheap (no torch, no toolkit).
"""
import math
import os

# Content types of the serving contract (DESIGN section 4).
JSON = "application/json"
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
ACCEPTED_CONTENT_TYPES = RAW_IMAGE_TYPES + (JSON,)
ACCEPTABLE_RESPONSE_TYPES = (JSON, "application/*", "*/*")
# Picture formats Pillow may decode from a request; anything else (EPS, PDF...) is refused unread.
PICTURE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"

# The handler service module MMS loads in each worker (it must define exactly one class).
HANDLER_SERVICE = "image_classifier.serving.handler_service"

PORT_ENV, DEFAULT_PORT = "SAGEMAKER_BIND_TO_PORT", 8080
MAX_PORT = 32766  # MMS 1.1.11 refuses ports >= 32767 ("Invalid port number"), e.g. Linux's ephemeral ones
BIND_ADDRESS_ENV, DEFAULT_BIND_ADDRESS = "IMAGE_CLASSIFIER_BIND_ADDRESS", "0.0.0.0"  # SageMaker needs all
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"  # default: one per GPU, else one per CPU core
TORCH_THREADS_ENV = "IMAGE_CLASSIFIER_TORCH_THREADS"  # default: cores / workers
# Seconds, not the toolkit's SAGEMAKER_MODEL_SERVER_TIMEOUT (read as minutes). MMS applies it to model
# loading too, so the default is well above the load time measured at start.
TIMEOUT_ENV, MIN_TIMEOUT_SECONDS = "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS", 60
# SageMaker's real-time endpoints accept 6 MB bodies; MMS itself refuses bigger ones with 413.
PAYLOAD_CAP_ENV, DEFAULT_PAYLOAD_CAP_MB = "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6
MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS = "IMAGE_CLASSIFIER_MAX_PIXELS", 50_000_000
MAX_BATCH_ENV, DEFAULT_MAX_BATCH = "IMAGE_CLASSIFIER_MAX_BATCH", 64  # pictures per JSON request
FORWARD_BATCH_ENV, DEFAULT_FORWARD_BATCH = "IMAGE_CLASSIFIER_FORWARD_BATCH", 16  # pictures per forward pass
TOP_K_ENV, DEFAULT_TOP_K = "IMAGE_CLASSIFIER_TOP_K", 5
JVM_ARGS_ENV, DEFAULT_JVM_ARGS = "SAGEMAKER_MODEL_SERVER_VMARGS", "-XX:-UseContainerSupport"
# Where serve keeps its MMS config, logs, pid file and worker sockets (a fresh folder under it).
RUNTIME_DIR_ENV = "IMAGE_CLASSIFIER_RUNTIME_DIR"
# How long serve waits for MMS to stop on SIGTERM before killing it.
STOP_GRACE_SECONDS = 10


def env_int(name, default, minimum=1, environ=None, maximum=None):
    """An integer setting; a clear ValueError naming the variable when it is not one."""
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        limit = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ValueError(f"{name}={value!r} must be {limit}")
    return number


def cpu_count():
    """Cores this process may use (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(gpus, cores):
    return gpus if gpus > 0 else cores


def threads_per_worker(cores, workers):
    """Torch threads per worker so that workers x threads = cores (more only oversubscribes)."""
    return max(1, cores // workers)


def response_timeout(load_seconds):
    """Seconds MMS waits for a worker: above the load time, with margin for a slow, busy host."""
    return max(MIN_TIMEOUT_SECONDS, math.ceil(3 * load_seconds) + 30)
