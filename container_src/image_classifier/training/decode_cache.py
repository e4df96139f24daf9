"""Decode once: every picture of a split decoded, resized to its short side, and kept as uint8.

Decoding a JPEG costs most of the input pipeline (on one core: decode 850-880 pictures/s, the whole PIL
train transform 250-270/s, a crop and flip of an already-decoded uint8 picture 1,350-1,430/s). The cache
keeps each picture of a split, decoded (JPEG draft decoding when it is at least twice the size needed) and
resized so its short side is the evaluation resize (256 for 224 px), in ONE memory-mapped file: the loader
workers map the same file, so the pictures sit once in the page cache, not once per worker. Each entry has a
flag (0 empty, 1 filled) and its shape beside the pixels; the sizes come from the pictures' headers, read
before training, so the file's layout is fixed up front.

It is filled during the first epoch, by whichever worker first loads a picture: that epoch decodes exactly
what the plain pipeline would have decoded, spread over every worker and overlapped with the model's steps,
while a separate pass before training would decode the same pictures with nothing to overlap (measured:
bench/bench_input.py, docs/BENCHMARKS.md). Everything read from the cache is what a fresh decode and resize
gives, byte for byte, so per-sample seeding and bit-for-bit resume on CPU hold whether a picture came from
the file or from its JPEG.

`decode-cache=auto` (the default) turns it on when the decoded pictures of every split take at most
MEMORY_SHARE of the host's available memory.
"""
import logging
import math
import os
import shutil
import tempfile
import weakref

import numpy as np
import psutil
import torch
from torchvision.transforms import functional as F
from torchvision.transforms.v2 import functional as F2

from ..images import open_rgb, read_header

log = logging.getLogger(__name__)

# Share of the host's available memory the decoded pictures may take under decode-cache=auto.
MEMORY_SHARE_ENV, DEFAULT_MEMORY_SHARE = "IMAGE_CLASSIFIER_DECODE_CACHE_MEMORY_SHARE", 0.5
# Where the memory-mapped file goes (its pages live in the page cache; the file is removed at the end).
CACHE_DIR_ENV = "IMAGE_CLASSIFIER_DECODE_CACHE_DIR"
_HEADER_ALIGN = 64
GB = 1e9  # bytes, as the log lines count them


def cache_folder():
    return os.environ.get(CACHE_DIR_ENV) or tempfile.gettempdir()


def memory_share():
    return float(os.environ.get(MEMORY_SHARE_ENV) or DEFAULT_MEMORY_SHARE)


def resized_shape(size, side):
    """(height, width) of a (width, height) picture resized to short side `side`, as torchvision's Resize."""
    width, height = size
    portrait = width <= height  # pragma: no mutate - a square comes out the same either way (<)
    short, long = (width, height) if portrait else (height, width)
    new_short, new_long = side, int(side * long / short)
    return (new_long, new_short) if portrait else (new_short, new_long)


def header_shapes(paths, side):
    """The resized (height, width) of each picture from its header alone; (0, 0) where it cannot be read (the
    picture is then decoded each time it is loaded, and fails like any bad picture)."""
    shapes = np.zeros((len(paths), 2), dtype=np.int64)  # pragma: no mutate - as float64 too (the callers multiply)
    for i, path in enumerate(paths):
        try:
            size = read_header(path, min_side=side).decoded_size  # after JPEG draft scaling, as decoded
        except Exception:  # noqa: BLE001 - the loader meets it again and counts it
            continue
        factor = min(size) // side  # open_rgb box-reduces other formats by this whole factor
        if factor >= 2:
            size = (math.ceil(size[0] / factor), math.ceil(size[1] / factor))
        shapes[i] = resized_shape(size, side)
    return shapes


def decode_resized(path, side):
    """The picture as uint8 HWC, short side `side`: drafted JPEG decode (at least 2x the size needed), then
    the same antialiased bilinear resize as the evaluation transform."""
    image = open_rgb(path, min_side=side)
    image = F.resize(image, side)  # bilinear, and PIL always antialiases: the evaluation transform's Resize
    return np.array(image)  # uint8 (an RGB picture), writable: torch.from_numpy wants it


def decide(mode, split_shapes, side):
    """Whether to cache (mode auto|on|off), with one log line saying which and why."""
    needed = int(sum(int((shapes[:, 0] * shapes[:, 1]).sum()) * 3 for shapes in split_shapes))
    pictures = sum(len(shapes) for shapes in split_shapes)
    available = psutil.virtual_memory().available
    share = memory_share()
    what = f"{pictures:,} pictures decoded at short side {side} take {needed / GB:.2f} GB"
    if mode == "off":
        log.info("Decode cache off (decode-cache=off): pictures are decoded every epoch")
        return False
    free = shutil.disk_usage(cache_folder()).free
    if needed > free:  # a write past the disk's end into a memory-mapped file kills the process (SIGBUS)
        log.warning("Decode cache off (decode-cache=%s): %s, more than the %.1f GB free in %s (set %s to a larger "
                    "folder)", mode, what, free / GB, cache_folder(), CACHE_DIR_ENV)
        return False
    if mode == "on":
        log.info("Decode cache on (decode-cache=on): %s (%.0f%% of the %.1f GB available)", what,
                 100 * needed / max(available, 1), available / GB)
        return True
    fits = needed <= share * available
    log.info("Decode cache %s (decode-cache=auto): %s, %s %.0f%% of the %.1f GB of memory available%s",
             "on" if fits else "off", what, "within" if fits else "more than", 100 * share, available / GB,
             "" if fits else "; pictures are decoded every epoch")
    return fits


class DecodeCache:
    """The decoded pictures of one split in one memory-mapped file, shared by every process that loads them."""

    def __init__(self, paths, side, shapes=None, folder=None):
        self.paths, self.side = list(paths), side
        shapes = header_shapes(self.paths, side) if shapes is None else np.asarray(shapes, dtype=np.int64)
        sizes = shapes[:, 0] * shapes[:, 1] * 3
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # Layout: flags (1 byte per picture), actual shapes (int32 pairs), then the pixels.
        n = len(self.paths)
        self._shape_at = _align(n)
        self._pixels_at = _align(self._shape_at + 8 * n)  # pragma: no mutate - a wider gap (9 * n) changes no picture
        self.nbytes = self._pixels_at + int(self.offsets[-1])
        folder = folder or cache_folder()
        handle, self.file = tempfile.mkstemp(prefix="decode-cache-", suffix=".u8", dir=folder)
        size = max(self.nbytes, 1)  # pragma: no mutate - np.memmap cannot map an empty file; any size > 0 will do
        os.ftruncate(handle, size)  # sparse: pages exist once written
        os.close(handle)
        self._map = None
        # Removed when the cache is dropped or the job exits, by the process that made it (never by a worker).
        self._remove = weakref.finalize(self, _remove_file, self.file, os.getpid())

    # ---- one mapping per process (a forked or spawned worker opens its own view of the same file)
    def __getstate__(self):
        not_shared = ("_map",  # this process's mapping
                      "_remove",  # pragma: no mutate - the maker's remover (which __setstate__ replaces anyway)
                      )
        return {key: value for key, value in self.__dict__.items() if key not in not_shared}

    def __setstate__(self, state):
        self.__dict__.update(state, _map=None, _remove=_keep_file)

    def _mapped(self):
        if self._map is None or self._map[0] != os.getpid():
            memory = np.memmap(self.file)  # np.memmap's defaults: all of it, as uint8, read and write
            self._map = (os.getpid(), memory)
        return self._map[1]

    def _views(self, index):
        memory = self._mapped()
        shape = memory[self._shape_at + 8 * index:self._shape_at + 8 * index + 8].view(np.int32)
        pixels = memory[self._pixels_at + self.offsets[index]:self._pixels_at + self.offsets[index + 1]]
        return memory, shape, pixels

    def filled(self):
        return int(np.count_nonzero(self._mapped()[:len(self.paths)]))

    def get(self, index):
        """The picture as a uint8 CHW tensor: from the file, or decoded now (and stored). Raises what decoding
        a bad picture raises."""
        memory, shape, pixels = self._views(index)
        if memory[index] == 1:
            height, width = int(shape[0]), int(shape[1])
            array = np.array(pixels).reshape(height, width, 3)  # a copy: the batch must not alias the file
        else:
            array = decode_resized(self.paths[index], self.side)
            if array.size == pixels.size:  # an EXIF rotation swaps the sides, not the area
                pixels[:] = array.ravel()
                shape[:] = array.shape[:2]
                memory[index] = 1  # last: a reader sees the flag only after the pixels
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)

    def close(self):
        self._map = None  # pragma: no mutate - any value drops the mapping (and the file goes next)
        self._remove()


def _remove_file(path, owner):
    if os.getpid() == owner:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _keep_file():
    """A copy in another process (a loader worker's) leaves the file to the process that made it."""


def _align(offset):
    return (offset + _HEADER_ALIGN - 1) // _HEADER_ALIGN * _HEADER_ALIGN  # pragma: no mutate - padding only


class CachedTransform:
    """Train or eval transform on a cached uint8 CHW picture (short side = the eval resize), returning uint8
    CHW at `image_size`; normalisation happens on the batch, on the device (data.to_model_input). Its random
    draws (RandomResizedCrop's scale 0.25-1 and ratio 3/4-4/3, then a coin for the flip) come from the
    per-sample generator the dataset passes: seeding torch's global generator costs more than the crop."""

    takes_generator = True
    scale, ratio = (0.25, 1.0), (3 / 4, 4 / 3)

    def __init__(self, image_size, augment, train):
        self.image_size, self.augment, self.train = image_size, augment, train

    def __call__(self, picture, generator=None):
        size = [self.image_size, self.image_size]
        if not self.train or self.augment == "none":
            return F.center_crop(picture, size)
        top, left, height, width = self.crop_box(picture.shape[-2], picture.shape[-1], generator)
        # transforms.v2 resizes a uint8 picture in HWC memory order on its fast path (3x the v1 functional's speed)
        picture = F2.resized_crop(picture, top, left, height, width, size)  # bilinear, antialiased (the defaults)
        if self.augment == "crop-flip" and torch.rand(1, generator=generator).item() < 0.5:
            picture = F2.horizontal_flip(picture)
        return picture

    def crop_box(self, height, width, generator):
        """torchvision's RandomResizedCrop.get_params, drawing from `generator`."""
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale, generator=generator).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
            w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = torch.randint(height - h + 1, size=(1,), generator=generator).item()  # from 0
                left = torch.randint(width - w + 1, size=(1,), generator=generator).item()
                return top, left, h, w
        # fallback to a central crop, as torchvision does
        in_ratio = width / height
        w, h = width, height
        if in_ratio < min(self.ratio):  # pragma: no mutate - at the bound, width / min(ratio) is the height
            h = int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):  # pragma: no mutate - at the bound, height * max(ratio) is the width
            w = int(round(height * max(self.ratio)))
        return (height - h) // 2, (width - w) // 2, h, w
