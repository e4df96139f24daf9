"""The dataset's layout, torch-free: the split folders, the class folders, the picture files and their headers.

A split is a folder of class folders (`train/001.Affenpinscher/Affenpinscher_00001.jpg`). The classes
are the sorted folder names of `train`; `valid` and `test` must have the same ones. The training job checks
its data with `load_splits` (data.py builds its datasets on the result), and the launcher runs the same
function on a local folder before any job starts (launcher/job_checks.py): one definition of each rule.

The channels are data from elsewhere: only regular files that resolve inside their channel are read
(a symlink out of it, a FIFO or a device named `*.jpg` is skipped and counted), and every class name,
file name or path goes into a log line or an error through `quote_for_log`, never as log syntax.
"""
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import constants
from ..images import DECODE_ERRORS, PICTURE_FORMATS, read_header
from ..metrics import quote_for_log

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The dataset cannot be used as given; the message says what to fix."""


def class_name(folder):
    """`001.Affenpinscher` -> `Affenpinscher`; `_` -> space (`German_shepherd_dog`)."""
    return re.sub(r"^\d+[._-]", "", folder).replace("_", " ").strip() or folder


def resolve_splits(channels):
    """Map train/valid/test to folders: separate channels, or one `train` channel with the sub-folders."""
    if constants.TRAIN_CHANNEL not in channels:
        raise DataError(f"No training data: give the job a '{constants.TRAIN_CHANNEL}' input, a folder with train/ "
                        f"valid/ test/ sub-folders (got: {', '.join(sorted(channels)) or 'none'}).")
    for split in constants.SPLIT_FOLDERS:
        if split in channels and not Path(channels[split]).is_dir():
            raise DataError(f"The '{split}' data {quote_for_log(channels[split])} is not a folder that can be read.")
    train_root = Path(channels[constants.TRAIN_CHANNEL])
    nested = {split: train_root / folder for split, folder in constants.SPLIT_FOLDERS.items()}
    if constants.VALID_CHANNEL not in channels and nested[constants.VALID_CHANNEL].is_dir() \
            and nested[constants.TRAIN_CHANNEL].is_dir():
        splits = {split: path for split, path in nested.items() if path.is_dir()}
    else:
        splits = {split: Path(channels[split]) for split in constants.SPLIT_FOLDERS if split in channels}
    if constants.VALID_CHANNEL not in splits:
        empty = not any(entry.is_dir() for entry in train_root.iterdir()) if train_root.is_dir() else True
        needs = "train/ and valid/ folders" if empty else "a valid/ folder beside train/"
        raise DataError(f"No validation pictures: {quote_for_log(train_root)} needs {needs} "
                        "(the dogImages layout: train/, valid/ and test/, one sub-folder per class in each).")
    return splits


def _is_picture(name):
    return not name.startswith(".") and name.lower().endswith(constants.IMAGE_EXTENSIONS)


def _inside(path, channel_real):
    real = os.path.realpath(path)
    return real == channel_real or real.startswith(channel_real.rstrip(os.sep) + os.sep)


def _names(names):
    return ", ".join(quote_for_log(name) for name in names)


def list_classes(root, channel=None):
    """The sorted class folders of `root`; a folder that resolves outside `channel` (default: `root`)
    is not one."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Data folder {quote_for_log(root)} does not exist.")
    channel_real = os.path.realpath(channel if channel is not None else root)
    try:
        folders = sorted(e.name for e in os.scandir(root)
                         if e.is_dir() and not e.name.startswith(".") and _inside(e.path, channel_real))
    except OSError as error:
        raise DataError(f"Cannot read the data folder {quote_for_log(root)}: {error.strerror or error}.") from None
    if not folders:
        raise DataError(f"{quote_for_log(root)} has no class folders: put each picture in a folder named after "
                        "its class (<split>/<class>/<picture>.jpg).")
    return folders


def _picture_files(folder, channel_real):
    """(regular picture files under `folder` resolving inside the channel, in a fixed order; what was
    skipped: symlinks out of the channel, FIFOs, devices, dangling links, linked sub-folders)."""
    files, skipped = [], []
    def unreadable(error):
        raise DataError(f"Cannot read the data folder {quote_for_log(error.filename)}: {error.strerror or error}.")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):  # does not descend into links
        dirnames.sort()
        skipped += [Path(dirpath) / name for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
        for name in sorted(filenames):
            if not _is_picture(name):
                continue
            path = Path(dirpath) / name
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:  # a dangling link, or gone
                regular = False
            (files if regular and _inside(path, channel_real) else skipped).append(path)
    return files, skipped


def match_classes(split, found, folders):
    """Every split has the training split's class folders, no more, no fewer."""
    if found != folders:
        missing, extra = sorted(set(folders) - set(found)), sorted(set(found) - set(folders))
        raise DataError(f"The '{split}' classes do not match 'train': missing [{_names(missing[:5]) or 'none'}], "
                        f"extra [{_names(extra[:5]) or 'none'}] ({len(found)} folders vs {len(folders)}): every split needs "
                        "the same class folders.")


def check_listing(paths):
    """The layout rules on a listing of a dataset's files (paths relative to it, `train/<class>/<file>`: an S3
    prefix's keys), as the job will find them: {split: picture count}. A class folder shows only through its
    pictures there, so an empty one is a missing one (the job's copy of the data will not have it either);
    the pictures themselves are checked by the job."""
    tree = {}  # split folder -> class folder -> pictures
    for path in paths:
        split, _, rest = path.partition("/")
        folder, _, name = rest.partition("/")
        if split in constants.SPLIT_FOLDERS.values() and name and not folder.startswith(".") \
                and _is_picture(name.rpartition("/")[2]):
            tree.setdefault(split, {}).setdefault(folder, 0)
            tree[split][folder] += 1
    train, valid = constants.SPLIT_FOLDERS[constants.TRAIN_CHANNEL], constants.SPLIT_FOLDERS[constants.VALID_CHANNEL]
    for needed in (train, valid):
        if needed not in tree:
            raise DataError(f"No pictures under {needed}/: expected the dogImages layout (train/, valid/ and test/, "
                            "one sub-folder per class in each, pictures ending in "
                            f"{', '.join(constants.IMAGE_EXTENSIONS)}).")
    folders = sorted(tree[train])
    for split in constants.SPLIT_FOLDERS.values():
        if split in tree:
            match_classes(split, sorted(tree[split]), folders)
    return {split: sum(tree[split].values()) for split in constants.SPLIT_FOLDERS.values() if split in tree}


def scan_split(root, folders, split, channel=None):
    """All (path, label) pairs of a split, in a fixed order; stray non-picture files are ignored, and
    anything that is not a regular file inside `channel` (default: `root`) is skipped with a count."""
    root = Path(root)
    channel_real = os.path.realpath(channel if channel is not None else root)
    match_classes(split, list_classes(root, channel_real), folders)
    samples, empty, skipped = [], [], []
    for label, folder in enumerate(folders):
        files, not_read = _picture_files(root / folder, channel_real)
        skipped += not_read
        if not files:
            empty.append(folder)
        samples += [(str(path), label) for path in files]
    if skipped:
        log.warning("Skipped %d entries in '%s' that are not regular files inside the data folder (links out of it, "
                    "FIFOs, devices, linked folders): %s%s", len(skipped), split, _names(skipped[:10]),
                    ", ..." if len(skipped) > 10 else "")
    if empty and split == constants.TRAIN_CHANNEL:
        raise DataError(f"Class folders with no pictures in '{split}': {_names(empty[:10])}. Add pictures to them, "
                        "or remove them from every split.")
    if empty:
        log.warning("Class folders with no pictures in '%s': %s", split, _names(empty[:10]))
    if not samples:
        raise DataError(f"No pictures in '{split}' ({quote_for_log(root)}): expected files ending in "
                        f"{', '.join(constants.IMAGE_EXTENSIONS)}.")
    return samples


def check_pictures(samples, policy, split):
    """Drop (policy 'skip') or refuse (policy 'fail') files that are not readable pictures."""
    good, bad = [], []
    for path, label in samples:
        try:
            # First the decode-cost checks open_rgb makes (declared pixels, the container's scans, segments
            # and chunks, counted from the bytes), so that Pillow never walks a hostile container.
            read_header(path)
            with Image.open(path, formats=PICTURE_FORMATS) as image:  # the formats training decodes
                image.verify()
            good.append((path, label))
        except DECODE_ERRORS as error:
            bad.append((path, str(error)))
    report_bad_pictures(bad, policy, split)
    return good, [path for path, _ in bad]


def report_bad_pictures(bad, policy, split):
    if not bad:
        return
    listing = "; ".join(f"{quote_for_log(path)} ({quote_for_log(reason)})" for path, reason in bad[:20])
    more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
    if policy == "fail":
        raise DataError(f"{len(bad)} unreadable picture(s) in '{split}' (on-bad-image=fail): {listing}{more}")
    log.warning("Skipping %d unreadable picture(s) in '%s': %s%s", len(bad), split, listing, more)


@dataclass(frozen=True)
class Splits:
    classes: list  # display names, in label order
    folders: list
    samples: dict  # split -> [(path, label)]
    bad_files: dict  # split -> [path] skipped at scan time


def load_splits(channels, on_bad_image="skip"):
    paths = resolve_splits(channels)
    # The channel each split lives in: its own, or the `train` channel holding train/ valid/ test/.
    channel_of = {split: channels[split] if Path(channels.get(split, "")) == path else channels[constants.TRAIN_CHANNEL]
                  for split, path in paths.items()}
    folders = list_classes(paths[constants.TRAIN_CHANNEL], channel_of[constants.TRAIN_CHANNEL])
    samples, bad_files = {}, {}
    for split, root in paths.items():
        scanned = scan_split(root, folders, split, channel_of[split])
        samples[split], bad_files[split] = check_pictures(scanned, on_bad_image, split)
    if not samples[constants.TRAIN_CHANNEL]:
        raise DataError("No readable training pictures.")
    return Splits([class_name(f) for f in folders], folders, samples, bad_files)
