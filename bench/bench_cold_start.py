#!/usr/bin/env python3
"""Cold start of the image's `serve`, measured on this machine against SageMaker serverless' limits.

    flock /tmp/cpu-heavy.lock .venv/bin/python bench/bench_cold_start.py [--repeats 3] [--image IMAGE]

Each repetition: `docker run -d IMAGE serve` with the model folder mounted read-only at /opt/ml/model,
as SageMaker (and `deploy --local docker`) start it, timed from the `docker run` call to the first
`GET /ping` 200, then to the first `POST /invocations` 200 (one 500x375 JPEG); then the container's
memory (cgroup peak, else the current use) and removal. Model as in bench/bench_serving.py: ResNet-50
at 224 px, 133 classes, random weights, with its int8 model (bench_serving.make_artifact), as a training job
writes it. Serving settings: the image's defaults, except
SAGEMAKER_MODEL_SERVER_WORKERS=1, AWS's advice for serverless endpoints (one worker, one copy of the
model). The image is already on the machine: SageMaker's own steps before `docker run` (finding
capacity, pulling the image, downloading model.tar.gz) are not measured and cannot be here.

Limits (AWS's serverless endpoint documentation): the model download plus the first /ping 200 within
3 minutes; each /invocations answered within 1 minute; the image at most 10 GB; memory at most 6144 MB.
The project's own target (issue 32): the first prediction within COLD_START_TARGET seconds of `docker run`
(median). The script exits 1 when the slowest repetition, the image or the memory misses one of them, or the
median misses that target. Loopback
only; run it under the CPU lock.
"""
import argparse
import datetime
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from image_classifier.serving import settings as serving_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as serving  # noqa: E402  (its model, picture, spread and test harness: one definition)

sys.path.insert(0, str(serving.PROJECT_DIR))
from launcher import docker_image  # noqa: E402
from launcher.local import docker as docker_backend  # noqa: E402

PING_LIMIT_SECONDS = 180  # model download + first /ping 200
INVOCATION_LIMIT_SECONDS = 60  # each /invocations
IMAGE_LIMIT_BYTES = 10 * 10**9
MEMORY_LIMIT_MB = 6144  # the largest serverless memory size
SERVERLESS_ENV = {serving_settings.WORKERS_ENV: "1"}  # AWS's advice for serverless: one copy of the model
POLL_SECONDS = 0.05
GIVE_UP_SECONDS = 600
COLD_START_TARGET = serving.COLD_START_TARGET  # seconds from `docker run` to the first prediction


def until(answer, started):
    """Seconds from `started` until `answer()` is 200 (connection refusals and other codes: again)."""
    while time.perf_counter() - started < GIVE_UP_SECONDS:
        try:
            if answer() == 200:
                return time.perf_counter() - started
        except OSError:  # refused or reset while the server starts
            pass
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"no answer within {GIVE_UP_SECONDS} s")


def memory_mb(name):
    """The container's peak memory (cgroup v2 memory.peak), else its current use, in MiB."""
    peak = docker_image.docker("exec", name, "cat", "/sys/fs/cgroup/memory.peak", check=False, timeout=30)
    if peak.returncode == 0 and peak.stdout.strip().isdigit():
        return int(peak.stdout) / 2**20, "peak"
    usage = docker_image.docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name, timeout=60).stdout
    value, unit = re.match(r"([\d.]+)\s*([KMG]i?B)", usage).groups()
    return float(value) * {"K": 2**-10, "M": 1, "G": 2**10}[unit[0]], "current"


def cold_start(image, model_dir, picture):
    """(seconds to the first /ping 200, to the first /invocations 200, memory MB, memory kind)."""
    port = serving.harness.free_port()
    name = f"bench-cold-start-{port}"
    command = docker_backend.serving_command(name, port, model_dir, image, SERVERLESS_ENV, environ={})
    started = time.perf_counter()
    try:
        docker_image.docker(*command, timeout=120)
        ping = until(lambda: serving.harness.request(port, "GET", "/ping", timeout=5)[0], started)
        first = until(lambda: serving.harness.invoke(port, picture, "image/jpeg",
                                                     timeout=INVOCATION_LIMIT_SECONDS)[0], started)
        memory, kind = memory_mb(name)
    finally:
        docker_image.docker("rm", "-f", name, check=False, timeout=120)
    return ping, first, memory, kind


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", help="default: the image of this tree (launcher/docker_image.py), built if missing")
    args = parser.parse_args()
    problem = docker_image.engine_problem()
    if problem:
        raise SystemExit(f"no docker: {problem}")
    image = args.image or docker_image.ensure_image()
    if not docker_image.image_exists(image):
        raise SystemExit(f"no image {image} on this machine")
    image_bytes = int(docker_image.docker("image", "inspect", "--format", "{{.Size}}", image).stdout)
    work = Path(tempfile.mkdtemp(prefix="bench-cold-start-"))
    pings, firsts, memories = [], [], []
    try:
        picture = serving.photo_jpeg(0)
        serving.make_artifact(work / "model", [serving.photo_jpeg(seed) for seed in range(serving.FLOOR_BATCH)])
        for path in [work, *work.rglob("*")]:  # the container's user reads the mounted model
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        for number in range(args.repeats):
            ping, first, memory, kind = cold_start(image, work / "model", picture)
            pings.append(ping)
            firsts.append(first)
            memories.append(memory)
            print(f"repeat {number + 1}: /ping 200 after {ping:.1f} s, first prediction after {first:.1f} s, "
                  f"memory {memory:.0f} MiB ({kind}), load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{image}, {image_bytes / 1e9:.2f} GB; ResNet-50 224 px, {serving.CLASSES} classes; one worker; "
          f"{serving.settings.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"{datetime.date.today()}; {args.repeats} repetitions, median (min-max). Measured locally with the "
          "image already pulled, not on SageMaker.")
    print("| measure | this machine | serverless limit |\n|---|---|---|")
    print(f"| `docker run` to the first /ping 200 (s) | {serving.spread(pings, digits=1)} | "
          f"{PING_LIMIT_SECONDS} (with the model download) |")
    print(f"| `docker run` to the first prediction (s) | {serving.spread(firsts, digits=1)} | - |")
    print(f"| first /ping 200 to the first prediction (s) | "
          f"{serving.spread([f - p for f, p in zip(firsts, pings)], digits=1)} | {INVOCATION_LIMIT_SECONDS} per request |")
    print(f"| container memory after the first prediction (MiB) | {serving.spread(memories)} | {MEMORY_LIMIT_MB} |")
    print(f"| image size (GB) | {image_bytes / 1e9:.2f} | {IMAGE_LIMIT_BYTES / 1e9:.0f} |")
    checks = [("the slowest first /ping 200 (s)", max(pings), PING_LIMIT_SECONDS),
              ("the slowest first prediction after /ping (s)", max(f - p for f, p in zip(firsts, pings)),
               INVOCATION_LIMIT_SECONDS),
              ("the container's memory (MiB)", max(memories), MEMORY_LIMIT_MB),
              ("the image (GB)", image_bytes / 1e9, IMAGE_LIMIT_BYTES / 1e9)]
    missed = [f"LIMIT MISSED: {what}: {value:.1f}, limit {limit:g}" for what, value, limit in checks if value > limit]
    if sorted(firsts)[len(firsts) // 2] > COLD_START_TARGET:
        missed.append(f"TARGET MISSED: the median first prediction after {sorted(firsts)[len(firsts) // 2]:.1f} s "
                      f"(target <= {COLD_START_TARGET:g} s)")
    print("\n".join(missed) or "Within serverless' limits (measured locally).")
    return 1 if missed else 0

if __name__ == "__main__":
    sys.exit(main())
