#!/usr/bin/env python3
"""What the smdebug hook at its default settings costs the training job: hook on vs `debug-hook=false`.

Runs the real training job (toolkit `train`, local process mode) on the digits sample with the demo's
hyperparameters, in `--pairs` pairs of one run with the hook and one without, the order alternating from pair
to pair (on, off / off, on ...) so that neither variant always runs first, on a warmer cache or a quieter
machine. Two figures per run:
- the job's own `images_per_sec` (training compute time per picture, data loading excluded; the hook works
  inside the forward and backward passes, so its cost is counted), averaged over the epochs;
- the whole job's wall time (start of `train` to its exit: start-up, training, validation, test, and with the
  hook, the rules at the end).
Each pair gives a paired ratio (hook on / hook off for images/s, hook off / hook on for wall time: above 1 means
the hook costs nothing). The floor: hook on >= 90% of hook off. The verdict is "met" when every paired ratio
is at or above the floor, "missed" when every one is below it, else "inconclusive" (the run-to-run spread
straddles the floor); the exit status is 0, 1 and 3 for these.

    flock /tmp/cpu-heavy.lock .venv/bin/python bench/bench_hook.py [--epochs 2] [--pairs 5]
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from image_classifier.metrics import parse_metrics  # noqa: E402
from launcher import SAMPLE_DIR  # noqa: E402
from launcher.local import process as local_process, trees  # noqa: E402
from launcher.local.training import DIGITS_HYPERPARAMETERS  # noqa: E402
from launcher.sample_data import write_digits  # noqa: E402

FLOOR = 0.90
MIN_PAIRS = 5
EXIT_CODES = {"met": 0, "inconclusive": 3, "missed": 1}  # in order of severity


def one_run(jobs_dir, name, epochs, hook):
    """(mean images/s over the epochs, whole job wall seconds) of one real job."""
    hps = dict(DIGITS_HYPERPARAMETERS, epochs=str(epochs), **{"debug-hook": str(hook).lower()})
    job = trees.prepare_job(jobs_dir, name, {"train": SAMPLE_DIR}, hps)
    started = time.perf_counter()
    exit_code = local_process.train(job, echo=False)
    seconds = time.perf_counter() - started
    if exit_code != 0:
        raise SystemExit(f"{name} failed (exit {exit_code}); see {job.log_file}")
    metrics = parse_metrics(job.log_file.read_text().splitlines())
    return statistics.mean(metrics["images_per_sec"]), seconds


def verdict(ratios, floor=FLOOR):
    if min(ratios) >= floor:
        return "met"
    if max(ratios) < floor:
        return "missed"
    return "inconclusive"


def spread(values):
    return f"median {statistics.median(values):.3f}, min {min(values):.3f}, max {max(values):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=MIN_PAIRS)
    args = parser.parse_args()
    if args.pairs < MIN_PAIRS:
        parser.error(f"--pairs must be at least {MIN_PAIRS}: fewer cannot show the spread")
    write_digits(SAMPLE_DIR)
    print(f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), "
          f"{time.strftime('%Y-%m-%d %H:%M')} UTC, load average before: {os.getloadavg()[0]:.2f}")
    print("| pair | order | hook on images/s | hook off images/s | ratio | hook on wall s | hook off wall s | "
          "wall ratio |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    rate_ratios, wall_ratios = [], []
    with tempfile.TemporaryDirectory() as jobs_dir:
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            result = {hook: one_run(jobs_dir, f"bench-{'on' if hook else 'off'}-{pair}", args.epochs, hook)
                      for hook in order}
            (rate_on, wall_on), (rate_off, wall_off) = result[True], result[False]
            rate_ratios.append(rate_on / rate_off)
            wall_ratios.append(wall_off / wall_on)
            print(f"| {pair + 1} | {'on, off' if order[0] else 'off, on'} | {rate_on:.1f} | {rate_off:.1f} | "
                  f"{rate_ratios[-1]:.3f} | {wall_on:.1f} | {wall_off:.1f} | {wall_ratios[-1]:.3f} |", flush=True)
    rate_verdict, wall_verdict = verdict(rate_ratios), verdict(wall_ratios)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print(f"images/s, hook on / off, {args.pairs} pairs: {spread(rate_ratios)}; floor {FLOOR}: {rate_verdict}")
    print(f"wall time, hook off / on, {args.pairs} pairs: {spread(wall_ratios)}; floor {FLOOR}: {wall_verdict}")
    worst = max((rate_verdict, wall_verdict), key=list(EXIT_CODES).index)  # missed over inconclusive over met
    return EXIT_CODES[worst]


if __name__ == "__main__":
    raise SystemExit(main())
