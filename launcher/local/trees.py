"""The `/opt/ml`-shaped trees of local runs, the same for every backend.

A training job's: `prepare_job` lays it out under `local_jobs/<job-name>/` with the config files SageMaker
writes (a backend runs `train` over it); `finish` packs `model.tar.gz` / `output.tar.gz` like SageMaker and
reads back the metrics. A model server's: `local_jobs/serving/port-<N>/`, its `model` folder filled by
`install_model` as SageMaker unpacks model.tar.gz.
"""
import json
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from image_classifier.contract import DEFAULT_HOST, MLPaths, atomic_write
from image_classifier.metrics import parse_metrics

from .. import ENTRY_SHIM, LOCAL_JOBS_DIR, LauncherError

SERVING_DIR = LOCAL_JOBS_DIR / "serving"

# resourceconfig.json: SageMaker's name for the one group of a job without heterogeneous clusters, and the
# instance type the toolkit (and the SDK's local mode) give a local host.
INSTANCE_GROUP, LOCAL_INSTANCE_TYPE = "homogeneousCluster", "local"
# A local job's folder name: one path component, SageMaker's job-name characters plus `.` and `_`.
JOB_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class LocalJob:
    name: str
    dir: Path

    @property
    def paths(self):
        return MLPaths(self.dir)

    @property
    def log_file(self):
        return self.dir / "train.log"

    @property
    def model_tar(self):
        return self.dir / "model.tar.gz"

    @property
    def succeeded(self):
        return self.paths.success.is_file()

    @property
    def failure_reason(self):
        failure = self.paths.failure
        return failure.read_text().strip() if failure.is_file() else None


def job_dir(jobs_dir, name):
    """`jobs_dir/name`, for a name that is a single safe path component (never `..`, `/`, or empty):
    the job tree is created, and parts of it replaced, under that folder."""
    if not isinstance(name, str) or not JOB_NAME_PATTERN.fullmatch(name):
        raise LauncherError(f"Job name {name!r} is not allowed: use 1-128 letters, digits, '-', '_' or '.', "
                            "starting with a letter or digit.")
    return Path(jobs_dir).absolute() / name  # absolute: the job runs from its code folder


def prepare_job(jobs_dir, name, channels, hyperparameters):
    """Create (or reuse, for a restart) the job tree. `channels`: {name: local folder}."""
    job = LocalJob(name, job_dir(jobs_dir, name))
    paths = job.paths
    for folder in (paths.config, paths.data, paths.model, paths.output_data, paths.checkpoints, paths.code):
        folder.mkdir(parents=True, exist_ok=True)
    # Exactly what SageMaker writes: every hyperparameter value is a string.
    paths.hyperparameters.write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    write_resource_config(job, DEFAULT_HOST, [DEFAULT_HOST])
    paths.input_data_config.write_text(json.dumps({
        channel: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for channel in channels}))
    for channel, source in channels.items():
        source = Path(source).resolve()
        if not source.exists():
            raise LauncherError(f"Channel '{channel}': {source} does not exist.")
        link = paths.channel(channel)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(source, target_is_directory=source.is_dir())
    shutil.copy(ENTRY_SHIM, paths.code / ENTRY_SHIM.name)
    for stale in (paths.success, paths.failure):
        stale.unlink(missing_ok=True)
    return job


def write_resource_config(job, current_host, hosts, interface="eth0"):
    """resourceconfig.json as a real job's has it: with `instance_groups` (one group, every host), which
    changes what the toolkit's environment computes (its distribution hosts), so local runs see it too."""
    job.paths.resource_config.write_text(json.dumps({
        "current_host": current_host,
        "current_instance_type": LOCAL_INSTANCE_TYPE,
        "current_group_name": INSTANCE_GROUP,
        "hosts": list(hosts),
        "instance_groups": [{"instance_group_name": INSTANCE_GROUP, "instance_type": LOCAL_INSTANCE_TYPE,
                             "hosts": list(hosts)}],
        "network_interface_name": interface,
    }))


def finish(job):
    """Pack the outputs like SageMaker and return {metric: last value}."""
    if job.succeeded:
        _tar(job.paths.model, job.model_tar)
        _tar(job.paths.output_data, job.dir / "output.tar.gz")
    lines = job.log_file.read_text(errors="replace").splitlines() if job.log_file.is_file() else []
    return {name: values[-1] for name, values in parse_metrics(lines).items()}


def _tar(folder, target):
    def write(tmp):
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(Path(folder).iterdir()):
                tar.add(path, arcname=path.name)

    atomic_write(target, write)


def newest_model(jobs_dir):
    """The newest successful local job's model.tar.gz, or None."""
    jobs = [LocalJob(p.name, p) for p in Path(jobs_dir).glob("*") if p.is_dir()]
    done = [j for j in jobs if j.succeeded and j.model_tar.is_file()]
    return max(done, key=lambda j: j.model_tar.stat().st_mtime).model_tar if done else None


# ----------------------------------------------------------------------------------- a model server's
def server_dir(port):
    """The base folder (SAGEMAKER_BASE_DIR) of the local model server on `port`."""
    return SERVING_DIR / f"port-{port}"


def install_model(model, model_dir):
    """Put the artifact in `model_dir` as SageMaker does: model.tar.gz unpacked, or a folder's files."""
    if not model.exists():
        raise LauncherError(f"Model {model} does not exist.")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    if model.is_dir():
        shutil.copytree(model, model_dir, dirs_exist_ok=True)
    elif tarfile.is_tarfile(model):
        with tarfile.open(model) as tar:
            tar.extractall(model_dir, filter="data")  # refuses absolute paths, .. and devices
    else:
        raise LauncherError(f"Model {model} is neither a model folder nor a model.tar.gz.")
