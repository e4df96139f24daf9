"""Channels, class names, transforms and loaders for image-folder datasets.

A split is a folder of class folders (`train/001.Affenpinscher/Affenpinscher_00001.jpg`). The classes
are the sorted folder names of `train`; `valid` and `test` must have the same ones.
"""
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from . import constants
from .images import open_rgb

log = logging.getLogger(__name__)

# What a broken picture can raise while decoding (PIL raises OSError subclasses, SyntaxError for some).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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


def list_classes(root):
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Data folder {root} does not exist.")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class folders: expected {root}/<class>/<picture>.jpg.")
    return folders


def scan_split(root, folders, split):
    """All (path, label) pairs of a split, in a fixed order; stray non-picture files are ignored."""
    root = Path(root)
    found = list_classes(root)
    if found != folders:
        missing, extra = sorted(set(folders) - set(found)), sorted(set(found) - set(folders))
        raise DataError(f"The '{split}' classes do not match 'train': missing {missing[:5] or 'none'}, "
                        f"extra {extra[:5] or 'none'} ({len(found)} folders vs {len(folders)}).")
    samples, empty = [], []
    for label, folder in enumerate(folders):
        files = []
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames.sort()
            files += [Path(dirpath) / name for name in sorted(filenames) if _is_picture(name)]
        if not files:
            empty.append(folder)
        samples += [(str(path), label) for path in files]
    if empty and split == constants.TRAIN_CHANNEL:
        raise DataError(f"Class folders with no pictures in '{split}': {', '.join(empty[:10])}.")
    if empty:
        log.warning("Class folders with no pictures in '%s': %s", split, ", ".join(empty[:10]))
    if not samples:
        raise DataError(f"No pictures in '{split}' ({root}): expected files ending in "
                        f"{', '.join(constants.IMAGE_EXTENSIONS)}.")
    return samples


def check_pictures(samples, policy, split):
    """Drop (policy 'skip') or refuse (policy 'fail') files that are not readable pictures."""
    good, bad = [], []
    for path, label in samples:
        try:
            with Image.open(path) as image:
                image.verify()
            good.append((path, label))
        except DECODE_ERRORS as error:
            bad.append((path, str(error)))
    report_bad_pictures(bad, policy, split)
    return good, [path for path, _ in bad]


def report_bad_pictures(bad, policy, split):
    if not bad:
        return
    listing = "; ".join(f"{path} ({reason})" for path, reason in bad[:20])
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
    folders = list_classes(paths[constants.TRAIN_CHANNEL])
    samples, bad_files = {}, {}
    for split, root in paths.items():
        samples[split], bad_files[split] = check_pictures(scan_split(root, folders, split), on_bad_image, split)
    if not samples[constants.TRAIN_CHANNEL]:
        raise DataError("No readable training pictures.")
    return Splits([class_name(f) for f in folders], folders, samples, bad_files)


def build_transforms(image_size, augment, mean=constants.IMAGENET_MEAN, std=constants.IMAGENET_STD):
    """(train, eval) transforms; augmentation on train only."""
    resize = round(image_size / constants.RESIZE_RATIO)
    evaluate = [transforms.Resize(resize, antialias=True), transforms.CenterCrop(image_size)]
    if augment == "none":
        train = list(evaluate)
    else:
        train = [transforms.RandomResizedCrop(image_size, scale=(0.25, 1.0), antialias=True)]
        if augment == "crop-flip":
            train.append(transforms.RandomHorizontalFlip())
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(train + tail), transforms.Compose(evaluate + tail)


class BadPicture(str):
    """Returned instead of a sample for a picture that fails to decode; the collate function drops it."""


class PictureDataset(Dataset):
    """Pictures and labels. Items are addressed as (epoch, index) so augmentation is seeded per sample:
    the same picture gets the same crop in the same epoch whatever the worker count or resume point."""

    def __init__(self, samples, transform, seed=0):
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path, label = self.samples[index]
        try:
            image = open_rgb(path)
        except DECODE_ERRORS as error:
            return BadPicture(f"{path} ({error})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.transform(image), label


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


def make_loader(dataset, sampler, batch_size, workers, pin_memory=False, drop_last=False):
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=False)
