"""Checks made before a job starts: before a container, a process, a job folder or an AWS call exists.

They run the container's own rules (`image_classifier.training.hyperparameters` for the hyperparameters,
`image_classifier.training.layout` for a local dataset folder): the job checks the same things again with the
same code, so a job the launcher lets through is one the job accepts. Errors are LauncherErrors in the user's
terms: the option (`--hp`, `--data`) or the folder and file, and the fix.
"""
import os
import shutil
import time
from pathlib import Path

from image_classifier import constants
from image_classifier.training.hyperparameters import HyperparameterError, Hyperparameters
from image_classifier.training.layout import DataError, check_listing, load_splits

from . import LauncherError, s3_upload


def check_hyperparameters(values):
    """The parsed Hyperparameters of `values` ({key: string}), or a LauncherError naming the key and the fix."""
    try:
        return Hyperparameters.from_strings(values)
    except HyperparameterError as error:
        raise LauncherError(f"--hp: {error}") from None


def check_local_data(folder, on_bad_image="skip", out=None):
    """The dataset folder's layout and pictures, as the job will find them (the folder is its `train` input).
    Prints one line about what it found (to `out`, default stdout); unreadable pictures are named (skipped by the
    job, or refused with on-bad-image=fail)."""
    started = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise LauncherError(f"--data {folder}: no such folder. Give a folder with train/, valid/ and test/ inside, "
                            "one sub-folder per class in each (the dogImages layout).")
    try:
        splits = load_splits({constants.TRAIN_CHANNEL: str(folder)}, on_bad_image)
    except DataError as error:
        raise LauncherError(f"--data {folder}: {error}") from None
    counts = ", ".join(f"{split} {len(samples)}" for split, samples in splits.samples.items())
    print(f"Data: {len(splits.classes)} classes in {folder} (pictures: {counts}); checked in "
          f"{time.perf_counter() - started:.1f} s.", file=out, flush=True)
    return splits


def check_s3_data(s3, uri, dry_run=False):
    """A dataset already in S3: the same layout rules on its listing (the job checks the pictures). Returns
    the splits found, in channel order (a dry run lists, as the command would, and takes all three)."""
    started = time.perf_counter()
    bucket, prefix = s3_upload.split_s3_uri(uri)
    keys = s3_upload.existing_objects(s3, bucket, prefix)
    if dry_run:
        return list(constants.SPLIT_FOLDERS)
    base = f"{prefix}/" if prefix else ""
    try:
        counts = check_listing([key[len(base):] for key in keys])
    except DataError as error:
        raise LauncherError(f"--data {uri}: {error} (fix the local folder and `python launch.py upload --data DIR "
                            "--delete`, which also removes what is gone locally)") from None
    print(f"Data: {uri} (pictures: {', '.join(f'{split} {n}' for split, n in counts.items())}); layout checked in "
          f"{time.perf_counter() - started:.1f} s.", flush=True)
    return [split for split in constants.SPLIT_FOLDERS if constants.SPLIT_FOLDERS[split] in counts]


def torch_hub_dir():
    """torch's cache folder for downloaded weights (torch.hub.get_dir's rule, without importing torch)."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]) / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "torch" / "hub"


def check_pretrained_weights(hp, weights_given):
    """A local job that needs ImageNet weights must be able to get them: given (--pretrained-weights), in torch's
    cache on this machine, or downloadable (weights-download=true). Else the two ways out."""
    if not hp.pretrained or weights_given or hp.weights_download:
        return
    cached = sorted((torch_hub_dir() / "checkpoints").glob(f"{hp.arch}-*.pth"))
    if cached:
        return
    raise LauncherError(
        f"pretrained=true needs the ImageNet weights of {hp.arch}, and this machine has none in torch's cache "
        f"({torch_hub_dir() / 'checkpoints'}). Either give a weights file: --pretrained-weights FILE.pth "
        f"(torchvision's {hp.arch} ImageNet file), or train from scratch: --hp pretrained=false "
        "(or --preset cpu-quick). With internet access, --hp weights-download=true fetches them.")


def refuse_existing_job(job_dir, replace=False, resume=False):
    """A job name is used once (SageMaker refuses a duplicate too): an existing local job is left as it is,
    unless the user asked to replace it (removed by `replace_job`, after every other check passed) or to resume
    it (a job that did not complete goes on from its checkpoint, as a restarted SageMaker job does)."""
    job_dir = Path(job_dir)
    if resume and replace:
        raise LauncherError("--resume and --replace contradict each other: resume the job, or replace it")
    if resume and not job_dir.is_dir():
        raise LauncherError(f"--resume: there is no local job named {job_dir.name} ({job_dir})")
    if resume and (job_dir / "output" / "success").is_file():
        raise LauncherError(f"--resume: the local job {job_dir.name} has completed; nothing to resume")
    if job_dir.exists() and not (replace or resume):
        raise LauncherError(f"A local job named {job_dir.name} already exists ({job_dir}): pick another "
                            "--job-name, leave it out for a new name, add --replace to remove the old job first, "
                            "or --resume to go on with a job that did not complete.")


def replace_job(job_dir):
    if Path(job_dir).exists():
        shutil.rmtree(job_dir)
        print(f"Removed the earlier job {Path(job_dir).name} (--replace).")


def check_transform_input(data):
    """A local transform's folder: there, and with files in it (the SageMaker side reads S3)."""
    folder = Path(data)
    if not folder.is_dir():
        raise LauncherError(f"--data {folder}: no such folder (a local transform sends every file under it).")
    if not any(path.is_file() for path in folder.rglob("*")):
        raise LauncherError(f"--data {folder}: no files in it.")
