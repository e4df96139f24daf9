"""The input pipeline per core: the PIL pipeline against the decode cache, and (--training) a training run with
the cache on and off.

Pictures like the dog set's (500x375 and 375x500 JPEGs, quality 90) are cut from real photos that ship with
matplotlib and scikit-learn (random crops, flips and colour shifts), or synthesised when those are missing.
One core (torch.set_num_threads(1), no loader workers), 224 px:
  - PIL pipeline: the job's training transform without the cache (decode with draft, RandomResizedCrop, flip,
    ToTensor, Normalize);
  - decode cache: the same pictures already in the cache (uint8, short side 256), random crop and flip on uint8
    on the CPU (normalisation is on the device, per batch: not counted);
  - fill: decode + resize + store into the cache (what the first epoch pays per picture with the cache on).
Alternated, ROUNDS rounds, median and spread; exits 1 when the cache is under TARGET times the PIL pipeline.

    python bench/bench_input.py [--pictures 200] [--rounds 5]
    python bench/bench_input.py --training    # cache on/off training runs, MobileNetV3-small head only (minutes)
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "container_src"),
                str(Path(__file__).resolve().parent.parent / "tests")]

from image_classifier.training import decode_cache  # noqa: E402
from image_classifier.preprocessing import build_transforms  # noqa: E402
from image_classifier.training.data import PictureDataset  # noqa: E402
from image_classifier.images import eval_resize  # noqa: E402

TARGET = 5.0  # the cache (CPU crop) against the PIL pipeline, per core
FEED_RATE = 2500  # pictures/s: a ResNet-50 with AMP on one A100 (NVIDIA's published table)
IMAGE_SIZE = 224


def real_photos():
    """Real photographs that ship with installed packages (matplotlib, scikit-learn)."""
    found = []
    for module, relative in (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
                             ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg")):
        try:
            base = Path(__import__(module).__file__).parent
        except ImportError:
            continue
        if (base / relative).is_file():
            found.append(base / relative)
    return found


def dog_like_pictures(folder, count, seed=0):
    """`count` JPEGs of 500x375 (one in four 375x500), cut from real photos (or synthesised)."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in real_photos()]
    paths = []
    for i in range(count):
        size = (375, 500) if i % 4 == 3 else (500, 375)
        if sources:
            source = sources[i % len(sources)]
            scale = rng.uniform(0.6, 1.0)
            w, h = int(source.width * scale), int(source.height * scale)
            left, top = rng.integers(0, source.width - w + 1), rng.integers(0, source.height - h + 1)
            picture = source.crop((left, top, left + w, top + h)).resize(size, Image.BICUBIC)
            pixels = np.asarray(picture, dtype=np.float32) * rng.uniform(0.8, 1.2, 3)
        else:  # photo-like: smooth shapes plus sensor noise
            base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            pixels = np.asarray(Image.fromarray(base).resize(size, Image.BICUBIC), dtype=np.float32)
            pixels += rng.normal(0, 8, pixels.shape)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        path = Path(folder) / f"dog_{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def rate(dataset, count, epoch):
    started = time.perf_counter()
    for index in range(count):
        dataset[(epoch, index)]
    return count / (time.perf_counter() - started)


def bench_pipeline(pictures, rounds):
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        paths = dog_like_pictures(folder, pictures)
        samples = [(p, 0) for p in paths]
        side = eval_resize(IMAGE_SIZE)
        train_tf, _ = build_transforms(IMAGE_SIZE, "crop-flip")
        plain = PictureDataset(samples, train_tf, seed=1, min_side=side)
        figures = {"PIL pipeline": [], "decode cache (CPU crop)": [], "cache fill": []}
        for round_ in range(rounds):  # alternated: each round measures every way once
            cache = decode_cache.DecodeCache(paths, side)
            cached = PictureDataset(samples, decode_cache.CachedTransform(IMAGE_SIZE, "crop-flip", train=True),
                                    seed=1, cache=cache)
            figures["cache fill"].append(rate(cached, pictures, round_))  # first pass: decodes and stores
            figures["PIL pipeline"].append(rate(plain, pictures, round_))
            figures["decode cache (CPU crop)"].append(rate(cached, pictures, round_ + 100))
            cache.close()
    print(f"input pipeline, one core, {pictures} dog-like JPEGs (500x375), {IMAGE_SIZE} px, {rounds} rounds "
          f"alternated ({os.cpu_count()} vCPUs here, load {os.getloadavg()[0]:.1f}):")
    medians = {}
    for name, values in figures.items():
        medians[name] = statistics.median(values)
        print(f"  {name:26s} median {medians[name]:7.0f} pictures/s per core "
              f"(min {min(values):.0f}, max {max(values):.0f})")
    ratio = medians["decode cache (CPU crop)"] / medians["PIL pipeline"]
    for name in ("PIL pipeline", "decode cache (CPU crop)"):
        print(f"  vCPUs to feed {FEED_RATE:,} pictures/s with the {name}: {FEED_RATE / medians[name]:.1f}")
    print(f"  cache / PIL pipeline: {ratio:.1f}x (target >= {TARGET:g}x): {'met' if ratio >= TARGET else 'MISSED'}")
    print(f"  filling during the first epoch costs {medians['PIL pipeline'] / medians['cache fill']:.2f}x the PIL "
          "pipeline per picture, spread over the loader workers and overlapped with the model's steps")
    return ratio >= TARGET


def bench_training(pictures_per_class, epochs, rounds, arch="mobilenet_v3_small", trainable_layers=0, batch_size=16,
                   workers=1, wait_target=None):
    """The real job on a dog-shaped set, cache on and off alternated, same seed: wall-clock pictures/s of the
    epochs after the first, the final valid accuracy and the data-wait share (`wait_target`: the most the
    cache's may be, e.g. 0.05 on a GPU)."""
    from conftest import train_job

    classes = ("001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier")
    hps = {"arch": arch, "pretrained": "false", "trainable-layers": str(trainable_layers),
           "image-size": str(IMAGE_SIZE), "epochs": str(epochs), "batch-size": str(batch_size),
           "workers": str(workers), "debug-hook": "false", "rules": "false"}
    results = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        for split, count in (("train", pictures_per_class), ("valid", max(pictures_per_class // 4, 2))):
            for c, name in enumerate(classes):
                (data / split / name).mkdir(parents=True)
                dog_like_pictures(data / split / name, count, seed=c + (0 if split == "train" else 100))
        from image_classifier.metrics import parse_metrics

        for round_ in range(rounds):
            for mode in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                job, code = train_job(Path(folder) / f"{mode}{round_}", dict(hps, **{"decode-cache": mode}),
                                      channels={"train": str(data)}, name=f"{mode}{round_}")
                if code != 0:
                    sys.exit(job.log_file.read_text()[-2000:])
                metrics = parse_metrics(job.log_file.read_text().splitlines())
                later = metrics["wall_images_per_sec"][1:]
                results[mode].append((statistics.mean(later), metrics["valid_acc"][-1], metrics["data_wait_share"][-1]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"training on {device}, {arch} (trainable-layers {trainable_layers}), {IMAGE_SIZE} px, batch {batch_size}, "
          f"workers {workers}, {3 * pictures_per_class} dog-like pictures, {epochs} epochs, {rounds} rounds alternated:")
    for mode, runs in results.items():
        print(f"  cache {mode:3s}: epochs after the first {statistics.median(r[0] for r in runs):.1f} pictures/s "
              f"(runs {', '.join(f'{r[0]:.1f}' for r in runs)}); valid_acc {', '.join(f'{r[1]:.3f}' for r in runs)}; "
              f"data-wait share {statistics.median(r[2] for r in runs):.2f}")
    speedup = statistics.median(r[0] for r in results["on"]) / statistics.median(r[0] for r in results["off"])
    print(f"  speed-up {speedup:.2f}x (target >= 1.5x): {'met' if speedup >= 1.5 else 'MISSED'}")
    if wait_target is not None:
        wait = statistics.median(r[2] for r in results["on"])
        print(f"  data-wait share with the cache {wait:.3f} (target < {wait_target:g}): "
              f"{'met' if wait < wait_target else 'MISSED'}")
        return speedup >= 1.5 and wait < wait_target
    return speedup >= 1.5


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pictures", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--training", action="store_true", help="the cache on/off training comparison instead")
    parser.add_argument("--pictures-per-class", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arch", default="mobilenet_v3_small",
                        help="the job's smallest network: the input pipeline, not the model, sets the pace")
    parser.add_argument("--trainable-layers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="-1: the job's default (vCPUs per GPU)")
    parser.add_argument("--wait-target", type=float, help="the most data-wait share the cache may leave (0.05)")
    args = parser.parse_args()
    if args.training:
        return 0 if bench_training(args.pictures_per_class, args.epochs, max(args.rounds // 2, 1), args.arch,
                                   args.trainable_layers, args.batch_size, args.workers, args.wait_target) else 1
    return 0 if bench_pipeline(args.pictures, args.rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
