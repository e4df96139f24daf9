#!/usr/bin/env python3
"""Serving benchmark: the endpoint against the in-process floor, in one run on one machine.

    .venv/bin/python bench/bench_serving.py [--arch resnet50] [--image-size 224] [--clients 4]

Floor: the same handler functions in this process (decode + preprocess + forward), for one picture and
for a batch, with torch using every core. Endpoint: the real `serve` (multi-model-server, default
settings) on a loopback port: sequential latency percentiles, requests/s with N concurrent clients, and
the cold start from process start to the first successful prediction. Ratios are endpoint / floor.
Random weights (no training): speed does not depend on them. Prints a Markdown table for
docs/BENCHMARKS.md. Do not run two model servers or benchmarks at once on a small machine.
"""
import argparse
import io
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from image_classifier.model import ModelConfig, build_model, save_artifact
from image_classifier.serving import handler

SERVE = Path(sys.executable).parent / "serve"
PORT = 28080  # below 32767: MMS refuses higher ports
CLASSES = 133  # the dog-breed set


def photo_jpeg(seed, size=(500, 375)):
    """A photo-sized JPEG (the dogImages pictures are around 500x375) with smooth content and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([(x * 255 / size[0]), (y * 255 / size[1]), ((x + y) % 256)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def timed(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def percentile(values, q):
    return float(np.percentile(values, q))


def measure_floor(model_dir, pictures, batch, repeats):
    model = handler.model_fn(str(model_dir))

    def one():
        handler.predict_fn(handler.input_fn(pictures[0], "image/jpeg"), model)

    def many():
        decoded = [handler.decode_picture(p) for p in pictures[:batch]]
        handler.predict_fn(handler.PictureRequest(decoded, 5), model)

    results = {}
    for threads in sorted({1, torch.get_num_threads()}):  # the floor is the faster of the two
        torch.set_num_threads(threads)
        one(), many()  # warm-up
        results[threads] = (statistics.median(timed(one, repeats)),
                            batch / statistics.median(timed(many, max(3, repeats // 8))))
    single_threads = min(results, key=lambda t: results[t][0])
    batch_threads = max(results, key=lambda t: results[t][1])
    return {"single_p50": results[single_threads][0], "single_threads": single_threads,
            "batch_per_s": results[batch_threads][1], "batch_threads": batch_threads,
            "all": results}


def post(picture, timeout=300):
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/invocations", data=picture,
                                     headers={"Content-Type": "image/jpeg"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        return response.status


def measure_endpoint(base_dir, pictures, requests, clients, concurrent_requests):
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(base_dir), SAGEMAKER_BIND_TO_PORT=str(PORT),
               IMAGE_CLASSIFIER_BIND_ADDRESS="127.0.0.1", IMAGE_CLASSIFIER_RUNTIME_DIR=str(base_dir))
    start = time.perf_counter()
    process = subprocess.Popen([str(SERVE)], env=env, stdout=open(base_dir / "serve.log", "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"serve exited: see {base_dir / 'serve.log'}")
            try:
                if post(pictures[0], timeout=600) == 200:
                    break
            except OSError:
                time.sleep(0.2)
        cold_start = time.perf_counter() - start
        for picture in pictures[:4]:  # warm every worker's first-call paths
            post(picture)
        sequential = [t for t in timed(lambda: post(pictures[1]), requests)]

        counter = iter(range(concurrent_requests))
        lock = threading.Lock()

        def client(index):
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                post(pictures[index % len(pictures)])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        throughput = concurrent_requests / (time.perf_counter() - began)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return {"cold_start": cold_start, "p50": percentile(sequential, 50), "p95": percentile(sequential, 95),
            "p99": percentile(sequential, 99), "requests_per_s": throughput}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16, help="pictures per forward pass for the floor")
    parser.add_argument("--requests", type=int, default=60, help="sequential requests")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--concurrent-requests", type=int, default=80)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        torch.manual_seed(0)
        config = ModelConfig(args.arch, [f"class {i}" for i in range(CLASSES)], args.image_size)
        save_artifact(work / "model", build_model(args.arch, CLASSES), config)
        pictures = [photo_jpeg(seed) for seed in range(args.batch)]
        floor = measure_floor(work / "model", pictures, args.batch, args.requests // 2)
        endpoint = measure_endpoint(work, pictures, args.requests, args.clients, args.concurrent_requests)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ms = lambda seconds: f"{seconds * 1000:.0f} ms"  # noqa: E731
    latency_ratio = endpoint["p50"] / floor["single_p50"]
    throughput_ratio = endpoint["requests_per_s"] / floor["batch_per_s"]
    print(f"\n{args.arch} {args.image_size} px, {CLASSES} classes, {len(pictures[0]) // 1024} KB JPEG "
          f"(500x375); {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("floor by torch threads: " + ", ".join(f"{t} thread(s): one picture {ms(one)}, batch {rate:.2f}/s"
                                                 for t, (one, rate) in floor["all"].items()))
    print("| measure | floor (in-process) | endpoint (serve) | endpoint / floor | target |")
    print("|---|---|---|---|---|")
    print(f"| one picture, p50 latency | {ms(floor['single_p50'])} ({floor['single_threads']} thread(s)) | "
          f"{ms(endpoint['p50'])} | {latency_ratio:.2f}x | <= 1.25x |")
    print(f"| endpoint p95 / p99 latency | | {ms(endpoint['p95'])} / {ms(endpoint['p99'])} | | |")
    print(f"| throughput, pictures/s | {floor['batch_per_s']:.2f} (batch {args.batch}, {floor['batch_threads']} thread(s)) | "
          f"{endpoint['requests_per_s']:.2f} ({args.clients} clients) | {throughput_ratio:.2f}x | >= 0.8x |")
    print(f"| cold start to first prediction | | {endpoint['cold_start']:.1f} s | | |")


if __name__ == "__main__":
    main()
