"""Channels, class names, datasets and loaders for image-folder datasets (the transforms: preprocessing.py).

A split is a folder of class folders (`train/001.Affenpinscher/Affenpinscher_00001.jpg`). The classes
are the sorted folder names of `train`; `valid` and `test` must have the same ones.

The channels are data from elsewhere: only regular files that resolve inside their channel are read
(a symlink out of it, a FIFO or a device named `*.jpg` is skipped and counted), and every class name,
file name or path goes into a log line or an error through `quote_for_log`, never as log syntax.
"""
import logging
import os
import re
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import constants
from ..images import DECODE_ERRORS, PICTURE_FORMATS, open_rgb, read_header
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
        raise DataError(f"No '{constants.TRAIN_CHANNEL}' channel: give the job a training data channel "
                        f"(got: {', '.join(sorted(channels)) or 'none'}).")
    for split in constants.SPLIT_FOLDERS:
        if split in channels and not Path(channels[split]).is_dir():
            raise DataError(f"The '{split}' channel {quote_for_log(channels[split])} is not a folder that can be read.")
    train_root = Path(channels[constants.TRAIN_CHANNEL])
    nested = {split: train_root / folder for split, folder in constants.SPLIT_FOLDERS.items()}
    if constants.VALID_CHANNEL not in channels and nested[constants.VALID_CHANNEL].is_dir() \
            and nested[constants.TRAIN_CHANNEL].is_dir():
        splits = {split: path for split, path in nested.items() if path.is_dir()}
    else:
        splits = {split: Path(channels[split]) for split in constants.SPLIT_FOLDERS if split in channels}
    if constants.VALID_CHANNEL not in splits:
        raise DataError("No validation data: add a 'valid' channel, or a train channel with "
                        "train/ valid/ test/ sub-folders (the dogImages layout).")
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
        raise DataError(f"{quote_for_log(root)} has no class folders: expected <split>/<class>/<picture>.jpg.")
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


def scan_split(root, folders, split, channel=None):
    """All (path, label) pairs of a split, in a fixed order; stray non-picture files are ignored, and
    anything that is not a regular file inside `channel` (default: `root`) is skipped with a count."""
    root = Path(root)
    channel_real = os.path.realpath(channel if channel is not None else root)
    found = list_classes(root, channel_real)
    if found != folders:
        missing, extra = sorted(set(folders) - set(found)), sorted(set(found) - set(folders))
        raise DataError(f"The '{split}' classes do not match 'train': missing [{_names(missing[:5]) or 'none'}], "
                        f"extra [{_names(extra[:5]) or 'none'}] ({len(found)} folders vs {len(folders)}).")
    samples, empty, skipped = [], [], []
    for label, folder in enumerate(folders):
        files, not_read = _picture_files(root / folder, channel_real)
        skipped += not_read
        if not files:
            empty.append(folder)
        samples += [(str(path), label) for path in files]
    if skipped:
        log.warning("Skipped %d entries in '%s' that are not regular files inside the channel (links out of it, "
                    "FIFOs, devices, linked folders): %s%s", len(skipped), split, _names(skipped[:10]),
                    ", ..." if len(skipped) > 10 else "")
    if empty and split == constants.TRAIN_CHANNEL:
        raise DataError(f"Class folders with no pictures in '{split}': {_names(empty[:10])}.")
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


class BadPicture(str):
    """Returned instead of a sample for a picture that fails to decode; the collate function drops it."""


class PictureDataset(Dataset):
    """Pictures and labels. Items are addressed as (epoch, index) so augmentation is seeded per sample:
    the same picture gets the same crop in the same epoch whatever the worker count or resume point.

    Without `cache`, each picture is decoded when loaded (a JPEG at least twice `min_side` is draft-decoded at
    a reduced scale) and `transform` is the PIL pipeline. With a decode_cache.DecodeCache over the same
    samples, the picture comes decoded from the cache and `transform` (decode_cache.CachedTransform) crops it
    as uint8."""

    def __init__(self, samples, transform, seed=0, min_side=None, cache=None):
        self.samples, self.transform, self.seed, self.min_side, self.cache = samples, transform, seed, min_side, cache

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path, label = self.samples[index]
        try:
            image = self.cache.get(index) if self.cache is not None else open_rgb(path, min_side=self.min_side)
        except DECODE_ERRORS as error:
            return BadPicture(f"{quote_for_log(path)} ({quote_for_log(error)})")
        seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        if getattr(self.transform, "takes_generator", False):  # draws from its own generator: no global state
            return self.transform(image, torch.Generator().manual_seed(seed)), label
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from the global generator
            torch.manual_seed(seed)
            return self.transform(image), label


def to_model_input(images, mean=constants.IMAGENET_MEAN, std=constants.IMAGENET_STD):
    """A batch as the model takes it: uint8 batches (the decode cache's) become normalised floats here, on
    whatever device they are on (on CUDA: in one pass over the batch on the GPU); float batches (the PIL
    pipeline's) are already normalised."""
    if images.dtype != torch.uint8:
        return images
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return images.float().div_(255).sub_(mean).div_(std)


def collate(batch):
    """Stack good samples; return the bad ones' descriptions beside them."""
    bad = [item for item in batch if isinstance(item, BadPicture)]
    good = [item for item in batch if not isinstance(item, BadPicture)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images, labels = zip(*good)
    return torch.stack(images), torch.tensor(labels), bad


class EpochSampler(Sampler):
    """Yields (epoch, index): a permutation fixed by (seed, epoch), sharded by rank for data-parallel
    jobs, starting `start` items in (to resume mid-epoch)."""

    def __init__(self, size, seed, shuffle, rank=0, world_size=1):
        self.size, self.seed, self.shuffle, self.rank, self.world_size = size, seed, shuffle, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def _indices(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
            # Training: every rank takes the same number of steps (DDP); the few left over wait for another epoch.
            order = order[:len(order) - len(order) % self.world_size]
        else:
            order = list(range(self.size))
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter([(self.epoch, i) for i in self._indices()[self.start:]])

    def __len__(self):
        return len(self._indices()) - self.start


def _leave_sigterm_to_the_job(worker_id):
    # A stop (SIGTERM to the whole process group) is the main process's to handle: it finishes the step,
    # saves and stops its workers in order. A worker killed by it would fail the job instead, in any loader.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset, sampler, batch_size, workers, pin_memory=False, drop_last=False):
    # A generator of its own: each pass would otherwise draw its workers' base seed from the global RNG (which
    # a resumed job's checkpoint restores), and augmentation is seeded per picture, so that seed is unused.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=False, generator=torch.Generator().manual_seed(0),
                      worker_init_fn=_leave_sigterm_to_the_job)
