"""The local jobs under local_jobs/: list them (`launch.py jobs`), remove them (`launch.py clean`), and keep a
finished one small (its final model stays; the intermediate checkpoints go unless asked to keep them)."""
import datetime
import json
import re
import shutil
import sys
from pathlib import Path

from image_classifier.constants import METADATA_FILE

from .. import LauncherError
from .hosts import HOSTS_FOLDER
from .trees import SERVING_DIR, LocalJob, job_dir

AGE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}  # --older-than 30m, 12h, 7d, 2w


def duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def parse_age(text):
    """`7d`, `12h`, `30m`, `2w` in seconds."""
    match = re.fullmatch(r"(\d+)([mhdw])", text.strip())
    if not match:
        raise LauncherError(f"--older-than {text}: expected a number and a unit, e.g. 30m, 12h, 7d or 2w")
    return int(match.group(1)) * AGE_UNITS[match.group(2)]


def local_jobs(jobs_dir):
    """Every job folder under `jobs_dir` (not the model servers' trees), oldest first."""
    folders = [p for p in Path(jobs_dir).glob("*") if p.is_dir() and p.resolve() != SERVING_DIR.resolve()
               and (p / "input").is_dir()]
    return sorted((LocalJob(p.name, p) for p in folders), key=lambda job: job.dir.stat().st_mtime)


def status(job):
    if job.succeeded:
        return "completed"
    return "failed" if job.failure_reason is not None else "incomplete"  # running, interrupted or killed


def accuracy_of(job):
    """The saved model's test accuracy (model.json), or None."""
    try:
        return json.loads((job.paths.model / METADATA_FILE).read_text())["metrics"].get("test_acc")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def size(folder):
    """Bytes under `folder`, links not followed (a job's data channels are links to the user's folders)."""
    return sum(p.lstat().st_size for p in Path(folder).rglob("*") if not p.is_symlink() and p.is_file())


def human_size(count):
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000


def modified(job):
    return datetime.datetime.fromtimestamp(job.dir.stat().st_mtime)


def describe(job):
    """`name (test accuracy 98.5%, 2026-12-06 20:50)`: how deploy names the job it serves."""
    accuracy = accuracy_of(job)
    shown = f"test accuracy {accuracy:.1%}" if accuracy is not None else "no test accuracy"
    return f"{job.name} ({shown}, trained {modified(job):%Y-%m-%d %H:%M})"


def job_of(model):
    """The local job a model artifact (its model.tar.gz or model folder) belongs to, or None."""
    path = Path(model).resolve()
    folder = path.parent if path.name in ("model.tar.gz", "model") else None
    return LocalJob(folder.name, folder) if folder is not None and (folder / "input").is_dir() else None


def print_jobs(jobs_dir, out=None):
    out = out or sys.stdout
    jobs = local_jobs(jobs_dir)
    if not jobs:
        print(f"No local jobs in {jobs_dir}.", file=out)
        return
    rows = [("NAME", "STATUS", "TEST ACC", "SIZE", "DATE")]
    for job in jobs:
        accuracy = accuracy_of(job)
        rows.append((job.name, status(job), "-" if accuracy is None else f"{accuracy:.1%}", human_size(size(job.dir)),
                     f"{modified(job):%Y-%m-%d %H:%M}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


def clean(jobs_dir, names=(), older_than=None, yes=False):
    """Remove the jobs named, or those older than `older_than` (e.g. "7d"), after one question unless `yes`.
    Returns the names removed."""
    if not names and not older_than:
        raise LauncherError("clean: name the jobs to remove, or give --older-than AGE (e.g. 7d)")
    if names:
        chosen = [LocalJob(name, job_dir(jobs_dir, name)) for name in names]
        missing = [job.name for job in chosen if not (job.dir / "input").is_dir()]
        if missing:
            raise LauncherError(f"no local job named {', '.join(missing)} in {jobs_dir} (see: python launch.py jobs)")
    else:
        limit = datetime.datetime.now() - datetime.timedelta(seconds=parse_age(older_than))
        chosen = [job for job in local_jobs(jobs_dir) if modified(job) < limit]
    if not chosen:
        print(f"No local job older than {older_than} in {jobs_dir}.")
        return []
    total = sum(size(job.dir) for job in chosen)
    print(f"{len(chosen)} job(s), {human_size(total)}: " + ", ".join(job.name for job in chosen))
    if not yes and input("Remove them? [y/N] ").strip().lower() not in ("y", "yes"):
        print("Nothing removed.")
        return []
    for job in chosen:
        shutil.rmtree(job.dir)
    print(f"Removed {len(chosen)} job(s), {human_size(total)}.")
    return [job.name for job in chosen]


def drop_checkpoints(job):
    """A completed job's intermediate checkpoints (its model is in model/ and model.tar.gz); every host's."""
    trees = [job.dir, *sorted((job.dir / HOSTS_FOLDER).glob("*"))]
    for tree in trees:
        folder = LocalJob(tree.name, tree).paths.checkpoints
        if folder.is_dir():
            shutil.rmtree(folder)
            folder.mkdir()
