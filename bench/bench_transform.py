#!/usr/bin/env python3
"""Batch transform benchmark: pictures/s of `launch.py transform --local process` against the serving
benchmark's throughput floor, in one run.

    flock /tmp/cpu-heavy.lock .venv/bin/python bench/bench_transform.py [--rounds 3] [--pictures 120]

Model and pictures as in bench/bench_serving.py: ResNet-50 at 224 px, 133 classes, random weights, a
500x375 JPEG per picture. Floor: that benchmark's throughput floor (the higher of one process batching 16
at all threads and one single-thread process per core, the same decode + preprocess + forward code
in-process). Transform: the real CLI as a subprocess over a folder of the pictures, default settings; its
rate is the one it prints (pictures / seconds from the first request to the last answer; the model
server's start is reported beside it). Rounds alternate the order. Target: transform >= 0.8x the floor
(median of the rounds); the script exits 1 when it is missed. Loopback only; run it under the CPU lock.
"""
import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as serving  # noqa: E402  (its model, pictures and floors: one definition)

PROJECT_DIR = serving.PROJECT_DIR
TARGET = 0.8
RATE = re.compile(r"(\d+) picture\(s\) transformed in ([\d.]+) s \(([\d.]+) pictures/s\)")
SETTINGS = re.compile(r"(\d+) model-server worker\(s\), (\d+) request\(s\) in flight")


def run_transform(data, out, model_dir):
    """(pictures/s while transforming, seconds of the whole command, "W workers, N in flight") of the real CLI."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(PROJECT_DIR / "launch.py"), "transform", "--local", "process",
                             "--data", str(data), "--output", str(out), "--model", str(model_dir),
                             "--port", str(serving.harness.free_port())],
                            capture_output=True, text=True, timeout=1800)
    total = time.perf_counter() - started
    found, settings = RATE.search(result.stdout), SETTINGS.search(result.stdout)
    if result.returncode != 0 or not found or not settings:
        raise SystemExit(f"transform failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return float(found.group(3)), total, f"{settings.group(1)} workers, {settings.group(2)} in flight"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pictures", type=int, default=120)
    args = parser.parse_args()
    cores = serving.settings.cpu_count()
    work = Path(tempfile.mkdtemp(prefix="bench-transform-"))
    floors, rates, totals, used = [], [], [], []
    try:
        torch.manual_seed(0)
        serving.save_artifact(work / "model", serving.build_model("resnet50", serving.CLASSES),
                              serving.ModelConfig("resnet50", [f"class {i}" for i in range(serving.CLASSES)], 224))
        pictures = [serving.photo_jpeg(seed) for seed in range(serving.FLOOR_BATCH)]
        data = work / "pictures"
        data.mkdir()
        for index in range(args.pictures):
            (data / f"photo_{index:05d}.jpg").write_bytes(pictures[index % len(pictures)])

        def floor():
            torch.set_num_threads(cores)
            batch = serving.batch_throughput(serving.load_model(work / "model", False, cores), pictures)
            per_core = serving.per_core_throughput(work / "model", pictures, cores, 20)
            floors.append(max(batch, per_core))

        def transform():
            rate, total, settings = run_transform(data, work / "out", work / "model")
            rates.append(rate)
            totals.append(total)
            used.append(settings)

        for number in range(args.rounds):
            for step in ((floor, transform) if number % 2 == 0 else (transform, floor)):
                step()
            print(f"round {number + 1}: floor {floors[-1]:.2f}/s, transform {rates[-1]:.2f}/s "
                  f"({rates[-1] / floors[-1]:.2f}x; {used[-1]}), whole command {totals[-1]:.1f} s, load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [rate / floor for rate, floor in zip(rates, floors)]
    print(f"\nResNet-50 224 px, {serving.CLASSES} classes, random weights; {args.pictures} 500x375 JPEGs; {cores} "
          f"cores, {platform.processor() or platform.machine()}, torch {torch.__version__}; {datetime.date.today()}; "
          f"{args.rounds} rounds, median (min-max)")
    print("| measure | floor (in-process) | transform --local process | transform / floor | target |\n|---|---|---|---|---|")
    print(f"| pictures/s | {serving.spread(floors, digits=2)} | {serving.spread(rates, digits=2)} | "
          f"{serving.spread(ratios, digits=2)}x | >= {TARGET}x |")
    print(f"Whole command (server start, {args.pictures} pictures, stop, summary): {serving.spread(totals, digits=1)} s")
    if statistics.median(ratios) < TARGET:
        print(f"TARGET MISSED: transform {statistics.median(ratios):.2f}x the floor (target >= {TARGET}x)")
        return 1
    print("Target met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
