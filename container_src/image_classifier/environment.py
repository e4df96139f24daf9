"""The training job's environment, read once into one read-only object.

Like sagemaker-training's `Environment`: SageMaker (or the toolkit's `train`) describes the job with
`SM_*` variables and JSON files under /opt/ml. Each value is taken from its `SM_*` variable when set,
else from the files under `SAGEMAKER_BASE_DIR`, so the job also runs as a plain process.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import constants


def _json_file(path, default):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


@dataclass(frozen=True)
class TrainingEnvironment:
    base_dir: Path
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    channels: dict = field(default_factory=dict)  # name -> Path
    hyperparameters: dict = field(default_factory=dict)  # raw: strings as SageMaker writes them
    hosts: tuple = ("algo-1",)
    current_host: str = "algo-1"
    num_gpus: int = 0
    num_cpus: int = 1
    debug_hook_config: Path | None = None

    @property
    def is_master(self):
        return self.current_host == self.hosts[0]

    @property
    def failure_file(self):
        return self.output_dir / constants.FAILURE_FILE

    @classmethod
    def read(cls, environ=None):
        env = os.environ if environ is None else environ
        base = Path(env.get(constants.BASE_DIR_ENV, constants.DEFAULT_BASE_DIR))
        config_dir = base / "input" / "config"
        data_dir = base / "input" / "data"

        # Channels: SM_CHANNEL_<NAME> when the toolkit set them, else the folders SageMaker made.
        channels = {
            key[len("SM_CHANNEL_"):].lower(): Path(value)
            for key, value in env.items()
            if key.startswith("SM_CHANNEL_")
        }
        if not channels:
            names = list(_json_file(config_dir / "inputdataconfig.json", {}))
            if not names and data_dir.is_dir():
                names = [p.name for p in data_dir.iterdir() if p.is_dir()]
            channels = {name: data_dir / name for name in names}

        resources = _json_file(config_dir / "resourceconfig.json", {})
        hosts = json.loads(env["SM_HOSTS"]) if "SM_HOSTS" in env else resources.get("hosts", ["algo-1"])
        current = env.get("SM_CURRENT_HOST", resources.get("current_host", hosts[0]))

        try:
            import torch  # only for the GPU count; already imported by the job itself

            default_gpus = torch.cuda.device_count()
        except ImportError:  # pragma: no cover
            default_gpus = 0

        hook_config = config_dir / "debughookconfig.json"
        return cls(
            base_dir=base,
            model_dir=Path(env.get("SM_MODEL_DIR", base / "model")),
            output_dir=base / "output",
            output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", base / "output" / "data")),
            checkpoint_dir=Path(env.get("SM_CHECKPOINT_DIR", base / "checkpoints")),
            channels=channels,
            # The raw file, not SM_HPS: it keeps SageMaker's strings, which config.py parses and checks.
            hyperparameters=_json_file(config_dir / "hyperparameters.json", {}),
            hosts=tuple(hosts),
            current_host=current,
            num_gpus=int(env.get("SM_NUM_GPUS", default_gpus)),
            num_cpus=int(env.get("SM_NUM_CPUS", os.cpu_count() or 1)),
            debug_hook_config=hook_config if hook_config.is_file() else None,
        )
