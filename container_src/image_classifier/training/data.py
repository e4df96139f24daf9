"""Datasets and loaders for image-folder datasets (the layout checks: layout.py; the transforms: preprocessing.py).

`load_splits` (layout.py) finds and checks the pictures; here they become a `PictureDataset` and its loader.
"""
import signal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import constants
from ..images import DECODE_ERRORS, open_rgb
from ..metrics import quote_for_log


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
