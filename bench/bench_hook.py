#!/usr/bin/env python3
"""Training throughput with the smdebug hook at its default settings vs without it (same run otherwise).

Runs the real training job (toolkit `train`, local process mode) on the digits sample with the demo's
hyperparameters, alternating hook on / hook off `--repeats` times so that both see the same machine load,
and compares the job's own `images_per_sec` metric (training compute time per picture, data loading
excluded; the hook's work happens inside the forward and backward passes, so it is counted). The issue's
floor: with the hook, at least 90% of the images/s without it.

    .venv/bin/python bench/bench_hook.py [--epochs 2] [--repeats 2]
"""
import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import launch  # noqa: E402
from image_classifier.metrics import parse_metrics  # noqa: E402
from launcher import SAMPLE_DIR, local_training  # noqa: E402
from launcher.sample_data import write_digits  # noqa: E402

FLOOR = 0.90


def one_run(jobs_dir, name, epochs, hook):
    hps = dict(launch.DIGITS_HYPERPARAMETERS, epochs=str(epochs), **{"debug-hook": str(hook).lower()})
    job = local_training.prepare_job(jobs_dir, name, {"train": SAMPLE_DIR}, hps)
    started = time.perf_counter()
    exit_code = local_training.run_process(job, echo=False)
    seconds = time.perf_counter() - started
    if exit_code != 0:
        raise SystemExit(f"{name} failed (exit {exit_code}); see {job.log_file}")
    metrics = parse_metrics(job.log_file.read_text().splitlines())
    return statistics.mean(metrics["images_per_sec"]), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    write_digits(SAMPLE_DIR)
    results = {True: [], False: []}
    with tempfile.TemporaryDirectory() as jobs_dir:
        for repeat in range(args.repeats):
            for hook in (True, False):
                rate, seconds = one_run(jobs_dir, f"bench-{'hook' if hook else 'nohook'}-{repeat}", args.epochs, hook)
                results[hook].append(rate)
                print(f"run {repeat + 1} hook={'on ' if hook else 'off'}: {rate:7.1f} images/s "
                      f"(job wall time {seconds:.0f} s)", flush=True)
    with_hook, without = statistics.median(results[True]), statistics.median(results[False])
    ratio = with_hook / without
    print(f"\n{platform.node()} ({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs), "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"hook default settings: {with_hook:.1f} images/s; no hook: {without:.1f} images/s; "
          f"ratio {ratio:.3f} (floor {FLOOR})")
    return 0 if ratio >= FLOOR else 1


if __name__ == "__main__":
    raise SystemExit(main())
