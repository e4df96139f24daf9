"""Run a training job on this machine the way SageMaker runs it.

`prepare_job` lays out the `/opt/ml`-shaped tree under `local_jobs/<job-name>/` with the config files
SageMaker writes; `run_process` runs the toolkit's `train` over it (SAGEMAKER_BASE_DIR points there);
`finish` packs `model.tar.gz` / `output.tar.gz` like SageMaker and reads back the metrics.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from image_classifier.contract import (BASE_DIR_ENV, DEFAULT_HOST, PROGRAM_ENV, STUDIO_LOCAL_MODE_ENV, MLPaths,
                                       atomic_write)
from image_classifier.metrics import parse_metrics

from . import ENTRY_SHIM, LauncherError

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
    return Path(jobs_dir) / name


def prepare_job(jobs_dir, name, channels, hyperparameters):
    """Create (or reuse, for a restart) the job tree. `channels`: {name: local folder}."""
    job = LocalJob(name, job_dir(jobs_dir, name))
    paths = job.paths
    for folder in (paths.config, paths.data, paths.model, paths.output_data, paths.checkpoints, paths.code):
        folder.mkdir(parents=True, exist_ok=True)
    # Exactly what SageMaker writes: every hyperparameter value is a string.
    paths.hyperparameters.write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    paths.resource_config.write_text(json.dumps(
        {"current_host": DEFAULT_HOST, "hosts": [DEFAULT_HOST], "network_interface_name": "eth0"}))
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


def process_environment(job):
    env = dict(os.environ)
    env.update({
        BASE_DIR_ENV: str(job.dir),
        PROGRAM_ENV: ENTRY_SHIM.name,
        STUDIO_LOCAL_MODE_ENV: "true",  # the toolkit's DNS wait would hang on the host names otherwise
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def stream(command, log_file, env=None, echo=True):
    """Run `command` in its own process group, copying its output live to the terminal and to
    `log_file`. Ctrl-C or SIGTERM is passed on as SIGTERM so the job checkpoints; returns the exit code."""
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        previous = signal.signal(signal.SIGTERM, lambda *_: _terminate(process))
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if echo:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
            return process.wait()
        except KeyboardInterrupt:
            _terminate(process)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            _wait_group(process.pid)


def _terminate(process):
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _wait_group(pgid, timeout=120):
    """The toolkit may exit before the training script has saved its checkpoint: wait for the group."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)


def run_process(job, echo=True):
    """The toolkit's `train` console script from this Python's environment, as a subprocess."""
    train = Path(sys.executable).parent / "train"
    if not train.exists():
        raise LauncherError(f"{train} not found: run `make setup` (it installs sagemaker-training).")
    return stream([str(train)], job.log_file, process_environment(job), echo)


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
