"""Decode once: the decode cache (decode_cache.py) gives what a fresh decode gives, is shared by the loader
workers through one file, and feeds evaluation exactly as the PIL pipeline does."""
import fnmatch
import os
import pickle
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F2

from conftest import make_dataset
from image_classifier.training import decode_cache
from image_classifier.preprocessing import build_transforms
from image_classifier.training.data import EpochSampler, PictureDataset, make_loader, to_model_input
from image_classifier.training.layout import load_splits
from image_classifier.images import eval_resize


def _photo(path, size=(500, 375), seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.BICUBIC).save(path, quality=90)
    return str(path)


def test_cached_picture_is_the_fresh_decode_byte_for_byte(tmp_path):
    paths = [_photo(tmp_path / f"p{i}.jpg", size, seed=i) for i, size in enumerate([(500, 375), (375, 500), (1200, 900)])]
    cache = decode_cache.DecodeCache(paths, 64)
    assert cache.filled() == 0
    first = [cache.get(i) for i in range(3)]
    assert cache.filled() == 3
    for i, path in enumerate(paths):
        fresh = torch.from_numpy(decode_cache.decode_resized(path, 64)).permute(2, 0, 1)
        assert torch.equal(first[i], fresh) and torch.equal(cache.get(i), fresh)
        assert min(fresh.shape[1:]) == 64
    # the 1200x900 JPEG was draft-decoded at 1/8 (150x113: at least twice the size needed), then resized: its
    # long side is 84, where a full decode would give 85
    assert tuple(first[2].shape) == (3, 64, 84)
    file = cache.file
    cache.close()
    assert not os.path.exists(file)


def test_the_headers_give_the_shapes_the_decode_gives(tmp_path):
    """header_shapes reads only the headers, before training, and fixes the file's layout: it must predict each
    picture's decoded and resized (height, width) exactly. JPEGs drafted at a reduced scale (1000x700: a full
    decode would give 91), other formats box-reduced by a whole factor, either orientation; an unreadable file
    gets (0, 0), and the pictures after it their shapes."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    sizes = [(500, 375), (375, 500), (1000, 700), (300, 300)]
    paths = [str(bad), *(_photo(tmp_path / f"p{i}.jpg", size, seed=i) for i, size in enumerate(sizes))]
    for width, height in [(601, 301), (131, 199)]:  # reduced by 4, by 2 (unreduced, 199 x 131 would give 97)
        png = tmp_path / f"{width}x{height}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(png)
        paths.append(str(png))
    shapes = decode_cache.header_shapes(paths, 64)
    assert shapes.tolist() == [[0, 0], [64, 85], [85, 64], [64, 90], [64, 64], [64, 127], [96, 64]]
    assert shapes[1:].tolist() == [list(decode_cache.decode_resized(path, 64).shape[:2]) for path in paths[1:]]


def test_the_cache_takes_the_shapes_read_before_training(tmp_path, monkeypatch):
    """The job reads every header once (header_shapes, to decide) and gives the shapes to the cache, which does
    not read them again. The file goes to the folder IMAGE_CLASSIFIER_DECODE_CACHE_DIR names, named for what
    it is."""
    paths = [_photo(tmp_path / f"p{i}.jpg", size, seed=i) for i, size in enumerate([(500, 375), (375, 500)])]
    shapes = decode_cache.header_shapes(paths, 64).tolist()
    monkeypatch.setattr(decode_cache, "read_header", lambda *args, **kwargs: pytest.fail("a header read again"))
    (tmp_path / "big-disk").mkdir()
    monkeypatch.setenv(decode_cache.CACHE_DIR_ENV, str(tmp_path / "big-disk"))
    cache = decode_cache.DecodeCache(paths, 64, shapes=shapes)
    assert [path.name for path in (tmp_path / "big-disk").iterdir()] == [os.path.basename(cache.file)]
    assert fnmatch.fnmatch(os.path.basename(cache.file), "decode-cache-*.u8")
    assert [tuple(cache.get(i).shape) for i in range(2)] == [(3, 64, 85), (3, 85, 64)] and cache.filled() == 2
    cache.close()


def test_shapes_handed_over_as_int32_do_not_overflow(tmp_path):
    """Big pictures take more bytes than int32 counts: the layout is counted in int64 whatever the shapes' type
    (the file is sparse, and nothing is written to it here)."""
    shapes = np.array([[40000, 40000]], dtype=np.int32)
    cache = decode_cache.DecodeCache([str(tmp_path / "huge.jpg")], 40000, shapes=shapes, folder=str(tmp_path))
    assert os.path.getsize(cache.file) >= 40000 * 40000 * 3
    cache.close()


def test_a_workers_copy_maps_the_same_file_without_its_pixels(tmp_path, monkeypatch):
    """A loader worker started by spawn gets the cache pickled: the file's name and layout, not its pixels. The
    copy maps the file once, reads what the parent wrote, writes what the parent then reads, and leaves the
    file to the parent."""
    maps, memmap = [], np.memmap
    monkeypatch.setattr(np, "memmap", lambda *args, **kwargs: maps.append(args) or memmap(*args, **kwargs))
    paths = [_photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(2)]
    cache = decode_cache.DecodeCache(paths, 64)
    first = cache.get(0)
    pickled = pickle.dumps(cache)
    assert len(pickled) < 2000  # a picture alone is 64 x 85 x 3 bytes
    copy = pickle.loads(pickled)
    assert torch.equal(copy.get(0), first) and torch.equal(copy.get(0), cache.get(0))
    copy.get(1)
    assert cache.filled() == 2 and torch.equal(cache.get(1), copy.get(1))
    assert len(maps) == 2  # one mapping each, however many pictures they read
    copy.close()
    del copy
    assert os.path.exists(cache.file)
    cache.close()
    assert not os.path.exists(cache.file)


def test_workers_fill_one_shared_file(tmp_path):
    """Two loader workers fill the cache during the first pass; the parent then reads every picture from the
    same file without decoding (the JPEGs are gone)."""
    paths = [_photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(8)]
    cache = decode_cache.DecodeCache(paths, 32)
    dataset = PictureDataset([(p, 0) for p in paths], decode_cache.CachedTransform(28, "none", train=False),
                             cache=cache)
    loader = make_loader(dataset, EpochSampler(len(dataset), 0, shuffle=False), 4, workers=2)
    first = torch.cat([images for images, _, _ in loader])
    assert first.dtype == torch.uint8 and cache.filled() == 8
    for path in paths:
        os.remove(path)
    again = torch.stack([dataset[i][0] for i in range(8)])
    assert torch.equal(first, again)


def test_cached_evaluation_equals_the_pil_pipeline(tmp_path):
    make_dataset(tmp_path / "data", {"train": 2, "valid": 3})
    splits = load_splits({"train": str(tmp_path / "data")})
    samples = splits.samples["valid"]
    _, eval_tf = build_transforms(24, "crop-flip")
    side = eval_resize(24)
    plain = PictureDataset(samples, eval_tf, min_side=side)
    cache = decode_cache.DecodeCache([p for p, _ in samples], side)
    cached = PictureDataset(samples, decode_cache.CachedTransform(24, "crop-flip", train=False), cache=cache)
    for i in range(len(samples)):
        assert torch.equal(to_model_input(cached[i][0][None])[0], plain[i][0]), i


def test_cached_augmentation_is_seeded_per_sample(tmp_path):
    path = _photo(tmp_path / "p.jpg")
    cache = decode_cache.DecodeCache([path], 64)
    dataset = PictureDataset([(path, 0)], decode_cache.CachedTransform(56, "crop-flip", train=True), seed=3,
                             cache=cache)
    a, b, other_epoch = dataset[(1, 0)][0], dataset[(1, 0)][0], dataset[(2, 0)][0]
    assert a.dtype == torch.uint8 and tuple(a.shape) == (3, 56, 56)
    assert torch.equal(a, b) and not torch.equal(a, other_epoch)
    # the per-sample generator starts from the seed the plain pipeline's transform gets: the same crop and
    # flip drawn
    plain_train, _ = build_transforms(56, "crop-flip")
    crop, flip = plain_train.transforms[:2]
    seeds = PictureDataset([(path, 0)], lambda image: torch.initial_seed(), seed=3)
    picture = cache.get(0)
    for key in [(1, 0), (2, 0), (3, 0)]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeds[key][0])
            top, left, height, width = crop.get_params(picture, crop.scale, crop.ratio)
            flipped = torch.rand(1).item() < flip.p
        expected = F2.resized_crop(picture, top, left, height, width, [56, 56], antialias=True)
        assert torch.equal(dataset[key][0], F2.horizontal_flip(expected) if flipped else expected), key


@pytest.mark.parametrize("shape", [(64, 85), (85, 64), (64, 64), (10, 1000), (1000, 10), (1, 1), (2, 3)],
                         ids=["landscape", "portrait", "square", "too-wide", "too-tall", "one-pixel", "tiny"])
def test_cached_augmentation_draws_what_the_plain_pipeline_draws(shape):
    """The cached train transform's crop and flip are the plain transform's (preprocessing.py), draw for draw:
    the same RandomResizedCrop scale and ratio (and central fallback for extreme shapes), and a flip in about
    half of the samples."""
    plain_train, _ = build_transforms(56, "crop-flip")
    crop, flip = plain_train.transforms[:2]
    assert isinstance(crop, T.RandomResizedCrop) and isinstance(flip, T.RandomHorizontalFlip)
    cached = decode_cache.CachedTransform(56, "crop-flip", train=True)
    assert (cached.scale, cached.ratio) == (tuple(crop.scale), tuple(crop.ratio))
    picture = torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    # a one-pixel picture draws a crop of zero height or width (rejected) in about one seed in 30
    seeds = range(100 if shape == (1, 1) else 40)
    flips = 0
    for seed in seeds:
        torch.manual_seed(seed)
        box = crop.get_params(picture, crop.scale, crop.ratio)
        flipped = torch.rand(1).item() < flip.p
        assert cached.crop_box(*shape, torch.Generator().manual_seed(seed)) == tuple(box), seed
        expected = F2.resized_crop(picture, *box, [56, 56], antialias=True)
        got = cached(picture, torch.Generator().manual_seed(seed))
        assert torch.equal(got, F2.horizontal_flip(expected) if flipped else expected), seed
        flips += flipped
    assert len(seeds) / 4 <= flips <= len(seeds) * 3 / 4


def test_a_draw_of_exactly_one_half_does_not_flip():
    """RandomHorizontalFlip flips when its draw is below p = 0.5, so does the cached transform, at the tie too:
    seed 0's float draw number 19,741,479 is exactly 0.5, and the crop's four draws come just before it."""
    plain_train, _ = build_transforms(56, "crop-flip")
    crop, flip = plain_train.transforms[:2]
    picture = torch.randint(0, 256, (3, 64, 85), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(0)
    for chunk in [1_000_000] * 19 + [741_474]:
        torch.rand(chunk, generator=generator)
    state = generator.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)
        box = crop.get_params(picture, crop.scale, crop.ratio)
        draw = torch.rand(1).item()
    assert draw == 0.5 and not draw < flip.p
    expected = F2.resized_crop(picture, *box, [56, 56], antialias=True)
    assert torch.equal(decode_cache.CachedTransform(56, "crop-flip", train=True)(picture, generator), expected)


@pytest.mark.parametrize("augment", ["none", "crop"])
def test_cached_training_without_the_flip_is_the_plain_pipelines(augment):
    """augment=none: the plain training transform is the evaluation one (a centre crop, nothing drawn); crop:
    its random resized crop, never flipped."""
    plain_train, _ = build_transforms(56, augment)
    crop = plain_train.transforms[1 if augment == "none" else 0]
    assert isinstance(crop, T.CenterCrop if augment == "none" else T.RandomResizedCrop)
    picture = torch.randint(0, 256, (3, 64, 85), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cached = decode_cache.CachedTransform(56, augment, train=True)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = F2.center_crop(picture, [56, 56]) if augment == "none" else \
            F2.resized_crop(picture, *crop.get_params(picture, crop.scale, crop.ratio), [56, 56], antialias=True)
        assert torch.equal(cached(picture, torch.Generator().manual_seed(seed)), expected), seed


def test_bad_picture_is_counted_every_time(tmp_path):
    good = _photo(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(open(good, "rb").read()[:400])  # a header, then nothing
    cache = decode_cache.DecodeCache([good, str(bad)], 32)
    dataset = PictureDataset([(good, 0), (str(bad), 1)], decode_cache.CachedTransform(28, "none", train=False),
                             cache=cache)
    assert dataset[1] == dataset[1] and "bad.jpg" in dataset[1]  # a BadPicture, both times
    assert cache.filled() == 0 and dataset[0][1] == 0 and cache.filled() == 1


def fake_host(monkeypatch, tmp_path, available, free):
    """The host's available memory and the cache folder's free space, as decide() reads them; returns the
    folders whose free space was asked for."""
    asked = []
    monkeypatch.setenv(decode_cache.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(decode_cache.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=available))
    monkeypatch.setattr(decode_cache.shutil, "disk_usage",
                        lambda folder: asked.append(folder) or types.SimpleNamespace(free=free))
    return asked


# 2,000 pictures at short side 500: 3.00 GB decoded
SHAPES, WHAT = [np.array([[500, 1000]] * 1500), np.array([[1000, 500]] * 500)], \
    "2,000 pictures decoded at short side 500 take 3.00 GB"


def test_the_decision_and_the_line_that_says_why(monkeypatch, caplog, tmp_path):
    """On when the pictures take at most the memory share (exactly 75 % of 4 GB fits) and the cache folder's
    disk holds them (exactly fits too); each decision says why in one line."""
    caplog.set_level("INFO", logger=decode_cache.log.name)
    asked = fake_host(monkeypatch, tmp_path, available=4e9, free=3e9)
    monkeypatch.setenv(decode_cache.MEMORY_SHARE_ENV, "0.75")
    assert decode_cache.decide("auto", SHAPES, 500) is True
    assert decode_cache.decide("on", SHAPES, 500) is True
    monkeypatch.setenv(decode_cache.MEMORY_SHARE_ENV, "0.5")
    assert decode_cache.decide("auto", SHAPES, 500) is False
    assert decode_cache.decide("off", SHAPES, 500) is False
    assert caplog.messages == [
        f"Decode cache on (decode-cache=auto): {WHAT}, within 75% of the 4.0 GB of memory available",
        f"Decode cache on (decode-cache=on): {WHAT} (75% of the 4.0 GB available)",
        f"Decode cache off (decode-cache=auto): {WHAT}, more than 50% of the 4.0 GB of memory available; "
        "pictures are decoded every epoch",
        "Decode cache off (decode-cache=off): pictures are decoded every epoch"]
    assert asked == [str(tmp_path)] * 3
    caplog.clear()
    fake_host(monkeypatch, tmp_path, available=0, free=3e9)  # no memory available: a percentage all the same
    assert decode_cache.decide("on", [np.array([[1, 1]])], 1) is True
    assert caplog.messages == ["Decode cache on (decode-cache=on): 1 pictures decoded at short side 1 take 0.00 GB "
                               "(300% of the 0.0 GB available)"]


def test_auto_decides_by_memory(monkeypatch, caplog):
    shapes = [np.array([[256, 341]] * 1000)]
    caplog.set_level("INFO")
    monkeypatch.setenv(decode_cache.MEMORY_SHARE_ENV, "0.5")
    assert decode_cache.decide("auto", shapes, 256) is True
    assert "Decode cache on (decode-cache=auto)" in caplog.text and "within 50%" in caplog.text
    monkeypatch.setenv(decode_cache.MEMORY_SHARE_ENV, "1e-9")
    assert decode_cache.decide("auto", shapes, 256) is False
    assert "more than 0%" in caplog.text and decode_cache.decide("on", shapes, 256) is True
    assert decode_cache.decide("off", shapes, 256) is False


@pytest.mark.gpu
def test_uint8_batches_are_normalised_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from image_classifier.training.loop import model_input

    batch = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    on_gpu = model_input(batch, torch.device("cuda"))
    assert on_gpu.device.type == "cuda" and on_gpu.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(on_gpu.cpu(), to_model_input(batch), atol=1e-6)


def test_no_cache_where_the_disk_cannot_hold_it(monkeypatch, caplog, tmp_path):
    """The file is memory-mapped: writing past a full disk would kill a worker (SIGBUS), so it is not made."""
    import collections

    monkeypatch.setenv(decode_cache.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(decode_cache.shutil, "disk_usage", lambda folder: collections.namedtuple(
        "usage", "total used free")(10**10, 10**10, 2.5e9))
    for mode in ("on", "auto"):
        assert decode_cache.decide(mode, SHAPES, 500) is False
        assert caplog.messages[-1] == (
            f"Decode cache off (decode-cache={mode}): {WHAT}, more than the 2.5 GB free in {tmp_path} (set "
            f"{decode_cache.CACHE_DIR_ENV} to a larger folder)")
