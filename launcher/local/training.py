"""`train --local`: a training job on this machine, in the image (docker) or as processes, over a job
folder laid out as SageMaker's /opt/ml (trees.py), on one emulated host or several (hosts.py).

Everything the job would refuse is checked first (job_checks.py), before a job folder or a process exists.
The job's whole output goes to its train.log; the terminal gets a short version (job_output.py) and, at the
end, a summary of a few lines.
"""
import os
import shutil
import time
from pathlib import Path

from image_classifier.constants import CORE_TAKEN_FROM, GIVE_WAY_ENV
from image_classifier.metrics import parse_metrics

from .. import SAMPLE_DIR, LauncherError, job_checks, presets, s3_upload, unique_name
from ..cli import parse_hp
from ..sample_data import write_digits
from . import backend, hosts, jobs, trees
from .job_output import Display

DEFAULT_PRESET = "cpu-quick"  # without --data: the digits sample, with the demo's settings
DIGITS_HYPERPARAMETERS = presets.PRESETS[DEFAULT_PRESET][1]  # the demo's values (benchmarks and tests use them)


def train_local(args):
    data = Path(args.data) if args.data else SAMPLE_DIR
    preset = args.preset or (None if args.data else DEFAULT_PRESET)
    hyperparameters = presets.hyperparameters(preset, parse_hp(args.hp))
    if args.pretrained_weights:
        hyperparameters["pretrained"] = parse_hp(args.hp).get("pretrained", "true")
    name = args.job_name or unique_name()
    job_dir = trees.job_dir(args.jobs_dir, name)
    job_checks.refuse_existing_job(job_dir, args.replace, args.resume)  # before anything of the earlier job is touched
    hp = job_checks.check_hyperparameters(hyperparameters)
    if not args.data:
        write_digits(SAMPLE_DIR)
    job_checks.check_local_data(data, hp.on_bad_image)
    runner = backend(args.local)
    if runner.MODE == "process":  # the image has its own cache (weights baked in with BAKE_WEIGHTS)
        job_checks.check_pretrained_weights(hp, args.pretrained_weights)
    if args.replace:
        job_checks.replace_job(job_dir)

    channels = {"train": data}
    if args.pretrained_weights:
        channels["pretrained"] = local_pretrained_channel(args.pretrained_weights, job_dir)
    display = Display(verbose=args.verbose)
    started = time.monotonic()
    if args.instance_count > 1:
        host_jobs = hosts.prepare_hosts(args.jobs_dir, name, channels, hyperparameters, args.instance_count,
                                        runner.HOST_INTERFACE)
        job = host_jobs[0]
        print(f"Training job {name} ({runner.MODE}, {args.instance_count} emulated hosts{preset_words(preset)}) "
              f"in {job.dir}")
        exit_code = runner.train_hosts(host_jobs, echo=display)  # every host's `train` at once
    else:
        job = trees.prepare_job(args.jobs_dir, name, channels, hyperparameters)
        print(f"Training job {name} ({runner.MODE}{preset_words(preset)}) in {job.dir}; log: {job.log_file}")
        # `docker run IMAGE train` over the tree, or the toolkit's `train`; a job on this machine gives way to
        # other processes (training/cpu_share.py)
        exit_code = runner.train(job, echo=display, env={GIVE_WAY_ENV: "1"})
    display.close()
    metrics = trees.finish(job)
    if not job.succeeded:
        raise LauncherError(f"Training job {name} failed (exit {exit_code}): "
                            f"{job.failure_reason or 'see ' + str(job.log_file)}"
                            + ("" if args.verbose else f" (whole output: {job.log_file}, or add --verbose)"))
    if not args.keep_checkpoints:
        jobs.drop_checkpoints(job)
    print(summary(job, metrics, preset, time.monotonic() - started, cpu_taken_elsewhere(job)))


def preset_words(preset):
    return f", preset {preset}" if preset else ""


def cpu_taken_elsewhere(job):
    """The cores other processes kept busy on average over the job's epochs (None: not measured)."""
    lines = job.log_file.read_text(errors="replace").splitlines() if job.log_file.is_file() else []
    values = parse_metrics(lines).get("cpu_taken_elsewhere")
    return sum(values) / len(values) if values else None


def summary(job, metrics, preset, seconds, taken_elsewhere=None):
    """The few lines a finished job ends with: accuracy, time, where the model is, the next command; and
    whether other processes slowed it down."""
    accuracy = (f"test accuracy {metrics['test_acc']:.1%}" if "test_acc" in metrics else "no test split")
    valid = f", best valid accuracy {metrics['best_valid_acc']:.1%}" if "best_valid_acc" in metrics else ""
    busy = ""
    if taken_elsewhere is not None and taken_elsewhere >= CORE_TAKEN_FROM:
        busy = (f"  note:   other processes kept {taken_elsewhere:.1f} of this machine's {os.cpu_count()} cores busy "
                "while it trained: it ran slower than this machine can (it trained on the cores left free; "
                "docs/TRAINING.md, \"A busy machine\")\n")
    return (f"\nTraining job {job.name} completed in {jobs.duration(seconds)}{preset_words(preset)}: "
            f"{accuracy}{valid}.\n{busy}"
            f"  model:  {job.model_tar}\n"
            f"  log:    {job.log_file}\n"
            f"  next:   python launch.py deploy --local --model {job.model_tar}\n"
            f"          python launch.py report --local --job {job.name}")


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
