"""SageMaker's container contract, in one place: the `/opt/ml` layout, the serving port and headers, and the
environment variables each side reads or sets. Torch-free, so the launcher imports it without torch.

`MLPaths(base)` is the whole tree a training or serving container sees under `SAGEMAKER_BASE_DIR`
(default `/opt/ml`); the local runners build their trees with it, the image code reads through it.
"""
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

# --- the /opt/ml tree
BASE_DIR_ENV, DEFAULT_BASE_DIR = "SAGEMAKER_BASE_DIR", "/opt/ml"  # overridable for local runs
DEFAULT_HOST = "algo-1"  # the first (and, on one instance, only) host of a job: resourceconfig.json's name
FAILURE_FILE = "failure"
FAILURE_MAX_BYTES = 1024  # SageMaker shows the first 1 KB as FailureReason
SUCCESS_FILE = "success"
TENSORS_FOLDER = "tensors"  # smdebug's tensors, under output/ (or output/data/, uploaded with output.tar.gz)


@dataclass(frozen=True)
class MLPaths:
    """The `/opt/ml`-shaped tree under `base`: what SageMaker mounts, and what the job and server read/write."""

    base: Path

    @classmethod
    def from_env(cls, environ=None):
        env = os.environ if environ is None else environ
        return cls(Path(env.get(BASE_DIR_ENV, DEFAULT_BASE_DIR)))

    def __post_init__(self):
        object.__setattr__(self, "base", Path(self.base))

    # input: config files and data channels
    @property
    def input(self):
        return self.base / "input"

    @property
    def config(self):
        return self.input / "config"

    @property
    def hyperparameters(self):
        return self.config / "hyperparameters.json"

    @property
    def input_data_config(self):
        return self.config / "inputdataconfig.json"

    @property
    def resource_config(self):
        return self.config / "resourceconfig.json"

    @property
    def debug_hook_config(self):
        return self.config / "debughookconfig.json"

    @property
    def data(self):
        return self.input / "data"

    def channel(self, name):
        return self.data / name

    # the model (tarred into model.tar.gz after training; unpacked here for serving)
    @property
    def model(self):
        return self.base / "model"

    # output: failure/success files, output/data (output.tar.gz), Debugger tensors
    @property
    def output(self):
        return self.base / "output"

    @property
    def output_data(self):
        return self.output / "data"

    @property
    def failure(self):
        return self.output / FAILURE_FILE

    @property
    def success(self):
        return self.output / SUCCESS_FILE

    @property
    def tensors(self):
        return self.output / TENSORS_FOLDER  # SageMaker's DebugHookConfig LocalPath

    @property
    def checkpoints(self):
        return self.base / "checkpoints"  # synced with CheckpointConfig's S3 prefix

    @property
    def code(self):
        return self.base / "code"  # the toolkit's SAGEMAKER_PROGRAM lives here


CONTAINER_PATHS = MLPaths(Path(DEFAULT_BASE_DIR))  # inside the image, as SageMaker runs it

# --- variables sagemaker-training sets for the job (each overrides what the files under /opt/ml say)
SM_CHANNEL_PREFIX = "SM_CHANNEL_"
SM_HOSTS = "SM_HOSTS"
SM_CURRENT_HOST = "SM_CURRENT_HOST"
SM_MODEL_DIR = "SM_MODEL_DIR"
SM_OUTPUT_DATA_DIR = "SM_OUTPUT_DATA_DIR"
SM_CHECKPOINT_DIR = "SM_CHECKPOINT_DIR"
SM_NUM_GPUS = "SM_NUM_GPUS"
SM_NUM_CPUS = "SM_NUM_CPUS"
TRAINING_JOB_NAME = "TRAINING_JOB_NAME"  # set by SageMaker (and the SDK's local mode); a spot restart keeps it
# What the toolkit's `train` runs: our script (local process runs) or a framework module (data parallel).
PROGRAM_ENV = "SAGEMAKER_PROGRAM"
TRAINING_MODULE_ENV = "SAGEMAKER_TRAINING_MODULE"
TRAINING_MODULE = "image_classifier.training.toolkit_entry:main"  # ours (training/toolkit_entry.py); docker/Dockerfile sets it too
STUDIO_LOCAL_MODE_ENV = "SM_STUDIO_LOCAL_MODE"  # "true": the toolkit skips its DNS wait for the other hosts

# --- serving: SageMaker's port, header and payload cap (the server's other settings: serving/settings.py)
PORT_ENV, SERVING_PORT = "SAGEMAKER_BIND_TO_PORT", 8080
BIND_ADDRESS_ENV, DEFAULT_BIND_ADDRESS = "IMAGE_CLASSIFIER_BIND_ADDRESS", "0.0.0.0"  # SageMaker needs all
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
PAYLOAD_CAP_ENV, DEFAULT_PAYLOAD_CAP_MB, MAX_PAYLOAD_CAP_MB = "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, 100
DEFAULT_TOP_K = 5


def atomic_write(path, write, keep_previous=None):
    """`write(tmp)` to a unique temporary file beside `path`, fsync it, rename it over `path`, fsync the
    folder: a reader (or a restarted job) sees the old file or the new one, never half of one, even after a
    crash or a power cut. `keep_previous`: a path to move the current file to first (the last good one).
    The file's mode follows the umask (0644 under 022), as open() would give it: mkstemp's 0600 would leave
    a model artifact unreadable to the unprivileged user the model server runs as."""
    path = Path(path)
    tmp = _create_unique(path.parent, f".{path.name}.", ".tmp")
    try:
        write(tmp)
        _fsync(tmp)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _create_unique(folder, prefix, suffix):
    """A new empty file with a random name, created with mode 0666 less the umask (os.umask is not read: it
    can only be read by setting it, which races with other threads creating files)."""
    while True:
        candidate = Path(folder) / f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
            return candidate
        except FileExistsError:
            continue


def atomic_write_text(path, text):
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _fsync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
