"""The training job's environment, read once into one read-only object.

Like sagemaker-training's `Environment`: SageMaker (or the toolkit's `train`) describes the job with
`SM_*` variables and JSON files under /opt/ml. Each value is taken from its `SM_*` variable when set,
else from the files under `SAGEMAKER_BASE_DIR`, so the job also runs as a plain process. A value that
cannot be read raises EnvironmentConfigError naming it (the job reports it in its failure file).
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import constants, contract
from ..contract import MLPaths
from ..metrics import quote_for_log


# A job name that can be one folder name: SageMaker's names (letters, digits, '-') and local ones ('.', '_').
JOB_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class EnvironmentConfigError(ValueError):
    """A malformed SM_* variable or /opt/ml/input/config file; the message names it."""


def _json_file(path, default):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as error:
        raise EnvironmentConfigError(f"Cannot read {path}: {error}") from None


def _json_value(name, text):
    try:
        return json.loads(text)
    except ValueError as error:
        raise EnvironmentConfigError(f"{name} is not valid JSON ({error}): {text[:200]!r}") from None


def _integer(name, text, minimum=0):
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or value < minimum:
        raise EnvironmentConfigError(f"{name} must be an integer >= {minimum}, got {str(text)[:100]!r}")
    return value


def _hosts(hosts, current, source):
    if not (isinstance(hosts, list) and hosts and all(isinstance(h, str) and h for h in hosts)):
        raise EnvironmentConfigError(f"{source}: hosts must be a non-empty list of host names, got {str(hosts)[:200]}")
    if current not in hosts:
        raise EnvironmentConfigError(f"{source}: the current host {str(current)[:100]!r} is not one of the hosts "
                                     f"{hosts[:8]}")
    return tuple(hosts)


def failure_file(environ=None):
    """Where the job's failure reason goes; needs only SAGEMAKER_BASE_DIR, so every failure can reach it."""
    return MLPaths.from_env(environ).failure


@dataclass(frozen=True)
class TrainingEnvironment:
    base_dir: Path
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path  # the checkpoint mount (synced to CheckpointConfig.S3Uri); see job_checkpoint_dir
    channels: dict = field(default_factory=dict)  # name -> Path
    hyperparameters: dict = field(default_factory=dict)  # raw: strings as SageMaker writes them
    hosts: tuple = (contract.DEFAULT_HOST,)
    current_host: str = contract.DEFAULT_HOST
    num_gpus: int = 0
    num_cpus: int = 1
    debug_hook_config: Path | None = None
    stop_at_step: int = 0  # fault injection for tests: SIGTERM to the job after this global step (0 = never)
    job_name: str | None = None  # TRAINING_JOB_NAME; None for a plain local run

    @property
    def is_master(self):
        return self.current_host == self.hosts[0]

    @property
    def job_checkpoint_dir(self):
        """Where this job keeps its checkpoints: a sub-folder named after the job, so jobs sharing one checkpoint
        location (tuning trials: one S3 URI for all) never read or overwrite each other's; a restarted job
        (spot) keeps its name and resumes. Without a job name, the checkpoint folder itself."""
        return self.checkpoint_dir / self.job_name if self.job_name else self.checkpoint_dir

    @property
    def paths(self):
        return MLPaths(self.base_dir)

    @property
    def failure_file(self):
        return self.paths.failure

    @property
    def input_dir(self):
        return self.paths.input

    @classmethod
    def read(cls, environ=None):
        env = os.environ if environ is None else environ
        paths = MLPaths.from_env(env)

        # Channels: SM_CHANNEL_<NAME> when the toolkit set them, else the folders SageMaker made.
        prefix = contract.SM_CHANNEL_PREFIX
        channels = {key[len(prefix):].lower(): Path(value) for key, value in env.items() if key.startswith(prefix)}
        if not channels:
            names = list(_json_file(paths.input_data_config, {}))
            if not names and paths.data.is_dir():
                names = [p.name for p in paths.data.iterdir() if p.is_dir()]
            channels = {name: paths.channel(name) for name in names}

        resources = _json_file(paths.resource_config, {})
        if not isinstance(resources, dict):
            raise EnvironmentConfigError(f"{paths.resource_config} must hold a JSON object")
        if contract.SM_HOSTS in env:
            hosts, source = _json_value(contract.SM_HOSTS, env[contract.SM_HOSTS]), contract.SM_HOSTS
        else:
            hosts, source = resources.get("hosts", [contract.DEFAULT_HOST]), str(paths.resource_config)
        current = env.get(contract.SM_CURRENT_HOST,
                          resources.get("current_host", hosts[0] if isinstance(hosts, list) and hosts else None))
        hosts = _hosts(hosts, current, source)

        try:
            import torch  # only for the GPU count; already imported by the job itself

            default_gpus = torch.cuda.device_count()
        except ImportError:  # pragma: no cover
            default_gpus = 0

        return cls(
            base_dir=paths.base,
            model_dir=Path(env.get(contract.SM_MODEL_DIR, paths.model)),
            output_dir=paths.output,
            output_data_dir=Path(env.get(contract.SM_OUTPUT_DATA_DIR, paths.output_data)),
            checkpoint_dir=Path(env.get(contract.SM_CHECKPOINT_DIR, paths.checkpoints)),
            channels=channels,
            # The raw file, not SM_HPS: it keeps SageMaker's strings, which hyperparameters.py parses and checks.
            hyperparameters=_hyperparameters(paths.hyperparameters),
            hosts=hosts,
            current_host=current,
            num_gpus=_integer(contract.SM_NUM_GPUS, env.get(contract.SM_NUM_GPUS, default_gpus)),
            num_cpus=_integer(contract.SM_NUM_CPUS, env.get(contract.SM_NUM_CPUS, os.cpu_count() or 1), minimum=1),
            debug_hook_config=paths.debug_hook_config if paths.debug_hook_config.is_file() else None,
            stop_at_step=_integer(constants.STOP_AT_STEP_ENV, env.get(constants.STOP_AT_STEP_ENV, 0)),
            job_name=_job_name(env.get(contract.TRAINING_JOB_NAME)),
        )


def _job_name(name):
    if not name:
        return None
    if not JOB_NAME_PATTERN.fullmatch(name):
        raise EnvironmentConfigError(f"{contract.TRAINING_JOB_NAME} {quote_for_log(name[:100])} cannot name a checkpoint "
                                     "folder: use 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit.")
    return name


def _hyperparameters(path):
    values = _json_file(path, {})
    if not isinstance(values, dict):
        raise EnvironmentConfigError(f"{path} must hold a JSON object of hyperparameters")
    return values
