"""`train --local`: a training job on this machine, in the image (docker) or as processes, over a job
folder laid out as SageMaker's /opt/ml (trees.py), on one emulated host or several (hosts.py)."""
import shutil
from pathlib import Path

from .. import SAMPLE_DIR, LauncherError, s3_upload, unique_name
from ..cli import parse_hp
from ..sample_data import write_digits
from . import backend, hosts, trees

# The demo's training run: digits are tiny, so a small ResNet from scratch at 32 px learns them in a minute.
DIGITS_HYPERPARAMETERS = {
    "arch": "resnet18", "pretrained": "false", "trainable-layers": "4", "image-size": "32",
    "epochs": "8", "batch-size": "32", "lr": "0.002", "augment": "none", "workers": "2",
}


def train_local(args):
    data = Path(args.data) if args.data else SAMPLE_DIR
    hyperparameters = dict(DIGITS_HYPERPARAMETERS) if not args.data else {}
    hyperparameters.update(parse_hp(args.hp))
    if not args.data:
        write_digits(SAMPLE_DIR)
    runner = backend(args.local)
    name = args.job_name or unique_name()
    channels = {"train": data}
    if args.pretrained_weights:
        channels["pretrained"] = local_pretrained_channel(args.pretrained_weights, Path(args.jobs_dir) / name)
        hyperparameters["pretrained"] = parse_hp(args.hp).get("pretrained", "true")
    if args.instance_count > 1:
        jobs = hosts.prepare_hosts(args.jobs_dir, name, channels, hyperparameters, args.instance_count,
                                   runner.HOST_INTERFACE)
        job = jobs[0]
        print(f"Training job {name} ({runner.MODE}, {args.instance_count} emulated hosts) in {job.dir}")
        exit_code = runner.train_hosts(jobs)  # every host's `train` at once: containers on a network, or processes
    else:
        job = trees.prepare_job(args.jobs_dir, name, channels, hyperparameters)
        print(f"Training job {name} ({runner.MODE}) in {job.dir}")
        exit_code = runner.train(job)  # `docker run IMAGE train` over the tree, or the toolkit's `train` process
    metrics = trees.finish(job)
    summary = " ".join(f"{k}={v:g}" for k, v in metrics.items())
    if not job.succeeded:
        raise LauncherError(f"Training job {name} failed (exit {exit_code}): {job.failure_reason or 'see ' + str(job.log_file)}")
    print(f"\nTraining job {name} completed. {summary}\nModel artifact: {job.model_tar}\nLog: {job.log_file}")


def local_pretrained_channel(weights, job_dir):
    """The `pretrained` channel of a local job: a folder holding the .pth file(s), as SageMaker would give it.
    A single file is copied into the job's own folder (a docker job mounts only its channels)."""
    if str(weights).startswith("s3://"):
        raise LauncherError("a local job reads its --pretrained-weights from this machine: give a .pth file or folder")
    files = s3_upload.weights_files(weights)
    if Path(weights).is_dir():
        return Path(weights)
    folder = job_dir / "pretrained-weights"
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        shutil.copyfile(path, folder / name)
    return folder
