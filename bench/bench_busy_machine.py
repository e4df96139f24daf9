"""A local training job on a busy machine: its step rate with every core free and with one core taken by
another process, for each thread count and OpenMP wait policy, and for what the job does (torch's default
threads and wait policy, giving way to other processes: training/cpu_share.py).

The step is the cpu-quick preset's (ResNet-18 from scratch, 32 px, batch 32, SGD), run by
`image_classifier.training.loop.train_one_epoch` on synthetic tensors, in a fresh process per run (OpenMP
reads its settings at start). "Busy" is a plain Python loop spinning in another process (one core), as a
browser tab or a compile would. Floor of each condition: the best static variant in it (every thread count x
both wait policies): the best this machine can do there. Variants alternate, ROUNDS rounds; median and spread.
Exits 1 when what the job does is under TARGET of the floor in either condition.

    python bench/bench_busy_machine.py [--rounds 3] [--seconds 8]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.8  # of the floor, in each condition
BATCH, IMAGE_SIZE, CLASSES = 32, 32, 10

WORKER = r"""
import json, os, sys, time
import torch
from image_classifier.model import build_model
from image_classifier.training import cpu_share
from image_classifier.training.loop import train_one_epoch

seconds, give_way = float(sys.argv[1]), sys.argv[2] == "1"
threads = int(os.environ.get("BENCH_THREADS", "0"))
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model("resnet18", %(classes)d)
optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
criterion = torch.nn.CrossEntropyLoss()
batch = (torch.randn(%(batch)d, 3, %(size)d, %(size)d), torch.randint(0, %(classes)d, (%(batch)d,)), [])

class Stop:
    requested = False
    def step_done(self, step):
        pass

def loader(n):
    for _ in range(n):
        yield batch

share = cpu_share.CpuShare() if give_way else None
on_step = (lambda **_: share.step()) if share else None
progress = dict(loss=0.0, correct=0, images=0, seconds=0.0, step=0, bad=0)
train_one_epoch(model, criterion, optimizer, scheduler, loader(3), torch.device("cpu"), None, progress, Stop())
progress = dict(loss=0.0, correct=0, images=0, seconds=0.0, step=0, bad=0)
started = time.perf_counter()
while time.perf_counter() - started < seconds:
    train_one_epoch(model, criterion, optimizer, scheduler, loader(4), torch.device("cpu"), None, progress, Stop(),
                    on_step=on_step)
wall = time.perf_counter() - started
print(json.dumps({"images_per_sec": progress["images"] / wall, "threads": torch.get_num_threads()}))
""" % {"classes": CLASSES, "batch": BATCH, "size": IMAGE_SIZE}

BUSY = "while True:\n    pass\n"


def variants(cores):
    """name -> (environment, give way): each static thread count x wait policy, and what local jobs do."""
    static = {}
    for threads in range(1, cores + 1):
        static[f"{threads} thread(s), default wait"] = ({"BENCH_THREADS": str(threads)}, False)
        static[f"{threads} thread(s), PASSIVE wait"] = ({"BENCH_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"},
                                                        False)
    return static, {"the job: torch's threads, default wait, gives way": ({}, True)}


def run(env, give_way, seconds):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "BENCH_"))}
    result = subprocess.run([sys.executable, "-c", WORKER, str(seconds), "1" if give_way else "0"],
                            env={**base, "PYTHONPATH": str(ROOT / "container_src"), **env},
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    static, applied = variants(cores)
    every = {**static, **applied}
    rates = {(condition, name): [] for condition in ("idle", "one core busy") for name in every}
    threads_seen = {}
    for round_ in range(args.rounds):
        for condition in ("idle", "one core busy"):
            hog = subprocess.Popen([sys.executable, "-c", BUSY]) if condition != "idle" else None
            try:
                time.sleep(0.5 if hog else 0)
                for name, (env, give_way) in every.items():
                    measured = run(env, give_way, args.seconds)
                    rates[condition, name].append(measured["images_per_sec"])
                    threads_seen.setdefault((condition, name), set()).add(measured["threads"])
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    missed = False
    print(f"{cores} cores, {os.uname().machine}, torch step: resnet18 {IMAGE_SIZE} px batch {BATCH}; "
          f"{args.rounds} rounds x {args.seconds:g} s; images/s median [min-max]\n")
    for condition in ("idle", "one core busy"):
        floor_name = max(static, key=lambda name: statistics.median(rates[condition, name]))
        floor = statistics.median(rates[condition, floor_name])
        print(f"{condition}: floor = {floor_name} ({floor:.1f} images/s)")
        print(f"| variant | images/s | spread | / floor | threads at the end |\n|---|---|---|---|---|")
        for name in every:
            values = rates[condition, name]
            ratio = statistics.median(values) / floor
            mark = ""
            if name in applied:
                ok = ratio >= TARGET
                missed |= not ok
                mark = f" (target >= {TARGET}: {'met' if ok else 'MISSED'})"
            print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f}-{max(values):.1f} | "
                  f"{ratio:.2f}{mark} | {','.join(map(str, sorted(threads_seen[condition, name])))} |")
        print()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
