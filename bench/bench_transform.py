#!/usr/bin/env python3
"""Batch transform benchmark: pictures/s of `launch.py transform --local process` against the serving
benchmark's throughput floor, in one run.

    flock /tmp/cpu-heavy.lock .venv/bin/python bench/bench_transform.py [--rounds 3] [--pictures 120]
        [--compare] [--busy N]

Model and pictures as in bench/bench_serving.py: ResNet-50 at 224 px, 133 classes, random weights, a
500x375 JPEG per picture. Floor: that benchmark's throughput floor (the higher of one process batching 16
at all threads and one single-thread process per core, the same decode + preprocess + forward code
in-process). Transform: the real CLI as a subprocess over a folder of the pictures, default settings (and
with --compare, serve's own CPU defaults beside them); its rate is the one it prints (pictures / seconds
from the first request to the last answer; the model server's start is reported beside it). --busy N
keeps N processes spinning on the CPU through the whole run, as other work on a shared machine does.
Rounds alternate the order. Target: the default transform >= 0.8x the floor (median of the rounds); the
script exits 1 when it is missed. Loopback only; run it under the CPU lock.
"""
import argparse
import datetime
import multiprocessing
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


def run_transform(data, out, model_dir, env):
    """(pictures/s while transforming, seconds of the whole command, "W workers, N in flight") of the real CLI."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(PROJECT_DIR / "launch.py"), "transform", "--local", "process",
                             "--data", str(data), "--output", str(out), "--model", str(model_dir),
                             "--port", str(serving.harness.free_port())],
                            capture_output=True, text=True, timeout=1800, env={**os.environ, **env})
    total = time.perf_counter() - started
    found, settings = RATE.search(result.stdout), SETTINGS.search(result.stdout)
    if result.returncode != 0 or not found or not settings:
        raise SystemExit(f"transform failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return float(found.group(3)), total, f"{settings.group(1)} workers, {settings.group(2)} in flight"


def spin():
    while True:
        pass


def variants(cores, compare):
    """(name, extra environment) of each transform measured: the default, and with --compare serve's own
    CPU defaults (the latency-minded ones a local job used before)."""
    measured = [("default", {})]
    if compare:
        workers = serving.settings.default_workers(0, cores)
        measured.append(("serve's defaults", {serving.settings.WORKERS_ENV: str(workers),
                                              serving.settings.TORCH_THREADS_ENV:
                                                  str(serving.settings.default_threads(cores, workers))}))
    return measured


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pictures", type=int, default=120)
    parser.add_argument("--compare", action="store_true", help="also measure serve's own CPU default settings")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="N processes spinning on the CPU the whole run (floor and transforms alike): a "
                             "machine that also runs other work")
    args = parser.parse_args()
    cores = serving.settings.cpu_count()
    measured = variants(cores, args.compare)
    work = Path(tempfile.mkdtemp(prefix="bench-transform-"))
    floors, rates, totals, used = [], {name: [] for name, _ in measured}, [], {}
    spinners = [multiprocessing.get_context("spawn").Process(target=spin, daemon=True) for _ in range(args.busy)]
    try:
        torch.manual_seed(0)
        serving.save_artifact(work / "model", serving.build_model("resnet50", serving.CLASSES),
                              serving.ModelConfig("resnet50", [f"class {i}" for i in range(serving.CLASSES)], 224))
        pictures = [serving.photo_jpeg(seed) for seed in range(serving.FLOOR_BATCH)]
        data = work / "pictures"
        data.mkdir()
        for index in range(args.pictures):
            (data / f"photo_{index:05d}.jpg").write_bytes(pictures[index % len(pictures)])
        for spinner in spinners:
            spinner.start()

        def floor():
            torch.set_num_threads(cores)
            batch = serving.batch_throughput(serving.load_model(work / "model", False, cores), pictures)
            per_core = serving.per_core_throughput(work / "model", pictures, cores, 20)
            floors.append(max(batch, per_core))

        def transforms():
            for name, env in measured:
                rate, total, settings = run_transform(data, work / "out", work / "model", env)
                rates[name].append(rate)
                used[name] = settings
                if name == "default":
                    totals.append(total)

        for number in range(args.rounds):
            for step in ((floor, transforms) if number % 2 == 0 else (transforms, floor)):
                step()
            print(f"round {number + 1}: floor {floors[-1]:.2f}/s; " + "; ".join(
                f"{name} ({used[name]}) {rates[name][-1]:.2f}/s = {rates[name][-1] / floors[-1]:.2f}x"
                for name, _ in measured) + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for spinner in spinners:
            spinner.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nResNet-50 224 px, {serving.CLASSES} classes, random weights; {args.pictures} 500x375 JPEGs; {cores} "
          f"cores, {platform.processor() or platform.machine()}, torch {torch.__version__}; {datetime.date.today()}; "
          f"{args.busy} busy process(es) beside; {args.rounds} rounds, median (min-max)")
    print("| transform --local process | pictures/s | floor (in-process) | transform / floor | target |\n|---|---|---|---|---|")
    for name, _ in measured:
        ratios = [rate / floor for rate, floor in zip(rates[name], floors)]
        print(f"| {name} ({used[name]}) | {serving.spread(rates[name], digits=2)} | {serving.spread(floors, digits=2)} "
              f"| {serving.spread(ratios, digits=2)}x | {f'>= {TARGET}x' if name == 'default' else '-'} |")
    print(f"Whole command (server start, {args.pictures} pictures, stop, summary): {serving.spread(totals, digits=1)} s")
    median = statistics.median(rate / floor for rate, floor in zip(rates["default"], floors))
    if median < TARGET:
        print(f"TARGET MISSED: transform {median:.2f}x the floor (target >= {TARGET}x)")
        return 1
    print("Target met.")
    return 0

if __name__ == "__main__":
    sys.exit(main())
