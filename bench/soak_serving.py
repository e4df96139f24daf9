#!/usr/bin/env python3
"""Soak: the real `serve` (default settings, ResNet-50 224 px, random weights) under 8 clients for 60 s of
mixed good and hostile requests, then 8 clients again while one worker is killed with SIGKILL.

    flock /tmp/cpu-heavy.lock .venv/bin/python bench/soak_serving.py [--clients 8] [--seconds 60]

Passes (exit 0) when every answer has the status its body expects, no worker dies in the first phase,
no worker's lowest RSS grows by more than --rss-growth-mib from the middle third of the phase to the
last third, and in the second phase the killed worker is replaced (new pid) while the other requests
keep succeeding. Loopback only. The short version of the same checks is tests/serving/test_serving_load.py
(`slow`).
"""
import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR / "tests"))

import serving_harness as harness  # noqa: E402
import serving_load as load  # noqa: E402
import serving_samples as samples  # noqa: E402
from image_classifier.model import ModelConfig, build_model, save_artifact  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--rss-growth-mib", type=int, default=150)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-serving-"))
    problems = []
    try:
        torch.manual_seed(0)
        save_artifact(work / "model", build_model("resnet50", 133),
                      ModelConfig("resnet50", [f"class {i}" for i in range(133)], 224))
        server = harness.Server(work)
        try:
            server.wait_ready(samples.png(), timeout=900)
            workers = {p.pid for p in server.workers()}
            result = load.run_load(server, args.clients, args.seconds, args.max_requests)
            print(f"phase 1: {len(result.answers)} requests in {result.seconds:.0f} s "
                  f"({result.requests_per_s:.1f}/s), {args.clients} clients, {len(workers)} workers")
            print("  answers by body: " + ", ".join(f"{name} {count}" for name, count in
                                                    sorted(Counter(a[1] for a in result.answers).items())))
            problems += [f"unexpected answer: {u}" for u in result.unexpected()]
            if {p.pid for p in server.workers()} != workers:
                problems.append("a worker died during phase 1")
            for pid, (settled, end) in load.rss_growth(result).items():
                print(f"  worker {pid}: lowest RSS {settled / 2**20:.0f} MiB in the middle third, "
                      f"{end / 2**20:.0f} MiB in the last third")
                if end - settled > args.rss_growth_mib * 2**20:
                    problems.append(f"worker {pid} RSS grew by {(end - settled) / 2**20:.0f} MiB")

            report = {}
            result = load.run_load(server, args.clients, args.seconds, args.max_requests,
                                   during=load.kill_a_worker(server, args.seconds / 6, report))
            failures = result.unexpected()
            print(f"phase 2: {len(result.answers)} requests; killed worker {report.get('victim')}; "
                  + (f"replaced after {report['replaced_at'] - report['killed_at']:.1f} s by "
                     f"{sorted(report['workers'] - workers)}" if "replaced_at" in report else "NOT replaced")
                  + f"; failed requests: {failures}")
            if "replaced_at" not in report:
                problems.append("the killed worker was not replaced")
            else:
                problems += [f"unexpected after the replacement: {u}"
                             for u in result.unexpected(after=report["replaced_at"])]
            if len(failures) > 1 or any(got not in (500, 503) for _, _, got in failures):
                problems.append(f"more than the killed worker's request failed: {failures}")
        finally:
            exit_code, alive = server.stop()
            if exit_code != 0 or alive:
                problems.append(f"serve exited {exit_code}, left {alive}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        print(f"FAILED: {problem}")
    print("soak passed" if not problems else f"soak failed ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
