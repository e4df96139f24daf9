#!/usr/bin/env python3
"""Serving benchmark: the endpoint at its default settings against in-process floors, in one run.

    flock /tmp/cpu-heavy.lock .venv/bin/python bench/bench_serving.py [--rounds 3] [--samples 200]
        [--variant NAME:ENV=VALUE,...]...   (extra endpoint settings to measure beside the defaults)
        [--explore]                          (also time each in-process optimisation at each thread count)

Floors (plain eager fp32 ResNet-50, the same decode + preprocess + forward code in this process):
- latency: the fastest single-picture median at any torch thread count (1 .. cores);
- throughput: the higher of one process batching (batch 16, all threads) and one single-thread
  process per core, all running at once.
Endpoint: the real `serve` (multi-model-server) on 127.0.0.1 at its default settings (and any
--variant): cold start to the first prediction, >= 200 sequential requests (p50, p95, p99), the
throughput of 2 clients per worker, the workers' RSS, and the time to refuse a pixel-bomb batch.
Engines (serving/engine.py): each one in-process as served, one picture, at each thread count, with its
top-1 agreement with plain eager fp32 on the benchmark pictures and its largest probability difference.
Each round measures everything; rounds alternate the order (floors first, then endpoint first). The
figures are the median and the spread (min-max) of the rounds. Targets, at the default settings:
p50 <= 0.8x the latency floor, throughput >= 1.3x the throughput floor, and every engine's top-1 agrees
with eager on every picture; the script exits 1 when one is missed. A full run (>= 3 rounds of >= 200 samples)
records the default endpoint's pictures/s in bench/serving_capacity.json, which launcher/scaling.py derives the
default autoscaling target from, and exits 1 too when that figure moved more than 20 % from the one recorded
before. Random weights: speed does not depend on them. Loopback only; run it under the CPU lock.
"""
import argparse
import datetime
import io
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR / "tests"))  # the serving test harness: start, wait, invoke, stop

sys.path.insert(0, str(PROJECT_DIR))  # launcher.scaling: the capacity record the autoscaling target is read from

import serving_harness as harness  # noqa: E402
from launcher import scaling  # noqa: E402
import serving_samples as samples  # noqa: E402
from image_classifier.model import ModelConfig, build_model, save_artifact  # noqa: E402
from image_classifier.serving import engine, handler, settings  # noqa: E402

CLASSES = 133  # the dog-breed set
FLOOR_BATCH = 16
LATENCY_TARGET, THROUGHPUT_TARGET = 0.8, 1.3


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


# ------------------------------------------------------------------------------------- in-process
def load_model(model_dir, optimize, threads, engine_name="torch"):
    """The handler's own model_fn: plain eager fp32 (optimize=False, torch) or as served by an engine; the
    environment is left as it was (the endpoint inherits it and must run at its defaults)."""
    saved = dict(os.environ)
    os.environ[settings.OPTIMIZE_ENV] = "true" if optimize else "false"
    os.environ[settings.TORCH_THREADS_ENV] = str(threads)
    os.environ[settings.ENGINE_ENV] = engine_name
    try:
        return handler.model_fn(str(model_dir))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def answer(model, picture):
    return handler.predict_fn(handler.input_fn(picture, "image/jpeg"), model)


def single_latency(model, pictures, samples_count):
    answer(model, pictures[0])  # warm-up
    return statistics.median(timed(lambda: answer(model, pictures[1]), samples_count))


def batch_throughput(model, pictures, repeats=3):
    body = samples.batch_json(*pictures[:FLOOR_BATCH])
    request = handler.input_fn(body, "application/json")
    handler.predict_fn(request, model)
    return FLOOR_BATCH / statistics.median(timed(lambda: handler.predict_fn(handler.input_fn(body, "application/json"),
                                                                            model), repeats))


def per_core_process(model_dir, pictures, count, barrier, results):
    torch.set_num_threads(1)
    model = load_model(model_dir, optimize=False, threads=1)
    answer(model, pictures[0])
    barrier.wait()
    started = time.perf_counter()
    for index in range(count):
        answer(model, pictures[index % len(pictures)])
    results.put(time.perf_counter() - started)


def per_core_throughput(model_dir, pictures, cores, count):
    """`cores` single-thread processes answering `count` pictures each, all at once."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(cores), context.Queue()
    processes = [context.Process(target=per_core_process, args=(model_dir, pictures, count, barrier, results))
                 for _ in range(cores)]
    for process in processes:
        process.start()
    seconds = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    return cores * count / max(seconds)


def explore_extras(model_dir, cores, samples_count):
    """Single optimisations, in-process: JPEG draft decoding, inference_mode against no_grad."""
    from image_classifier.images import open_rgb

    big = samples.big_jpeg()
    figures = {"12 MP JPEG decode, full": statistics.median(timed(lambda: open_rgb(big), 10)),
               "12 MP JPEG decode, drafted": statistics.median(timed(lambda: open_rgb(big, min_side=256), 10))}
    model = load_model(model_dir, False, cores)
    inputs = torch.randn(1, 3, 224, 224)
    for name, mode in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
        def forward():
            with mode():
                model.network(inputs)
        forward()
        figures[f"forward under {name}"] = statistics.median(timed(forward, max(50, samples_count // 4)))
    return figures


def engines():
    return ["torch"] + (["openvino"] if engine.openvino_available() else [])


def agreement(model, reference, pictures):
    """(share of pictures whose top-1 class is eager's, largest probability difference) on `pictures`."""
    body = samples.batch_json(*pictures)
    got = handler.predict_fn(handler.input_fn(body, "application/json"), model).probabilities
    expected = handler.predict_fn(handler.input_fn(body, "application/json"), reference).probabilities
    return float((got.argmax(1) == expected.argmax(1)).float().mean()), float((got - expected).abs().max())


def measure_engines(model_dir, pictures, cores, samples_count):
    """Each engine as served, in-process: one picture's median latency at each thread count, and its
    agreement with plain eager fp32."""
    figures = {}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        reference = load_model(model_dir, False, threads)
        for name in engines():
            model = load_model(model_dir, True, threads, name)
            if model.engine != name:
                raise RuntimeError(f"the {name} engine did not load (see the log)")
            figures[f"{name} {threads}t latency"] = single_latency(model, pictures, max(50, samples_count // 4))
            figures[f"{name} top-1 agreement"], figures[f"{name} largest difference"] = agreement(
                model, reference, pictures)
    return figures


def measure_floors(model_dir, pictures, cores, samples_count, explore):
    figures = {}
    thread_counts = sorted({1, cores})
    for threads in thread_counts:
        torch.set_num_threads(threads)
        figures[f"plain {threads}t latency"] = single_latency(load_model(model_dir, False, threads), pictures,
                                                              samples_count)
        if explore:
            for name, optimize in (("served", True),):
                figures[f"{name} {threads}t latency"] = single_latency(load_model(model_dir, optimize, threads),
                                                                       pictures, max(50, samples_count // 4))
    torch.set_num_threads(cores)
    figures["plain batch throughput"] = batch_throughput(load_model(model_dir, False, cores), pictures)
    figures["plain per-core throughput"] = per_core_throughput(model_dir, pictures, cores, max(5, samples_count // 7))
    if explore:
        figures.update(explore_extras(model_dir, cores, samples_count))
    figures.update(measure_engines(model_dir, pictures, cores, samples_count))
    torch.set_num_threads(cores)
    figures["latency floor"] = min(figures[f"plain {t}t latency"] for t in thread_counts)
    figures["throughput floor"] = max(figures["plain batch throughput"], figures["plain per-core throughput"])
    return figures


# ------------------------------------------------------------------------------------------ endpoint
def measure_endpoint(base_dir, pictures, samples_count, env):
    server = harness.Server(base_dir, **env)
    try:
        cold_start = server.wait_ready(pictures[0], "image/jpeg", timeout=900)
        workers = server.workers()
        for picture in pictures[:2 * len(workers)]:  # every worker's first-call paths
            harness.invoke(server.port, picture, "image/jpeg")

        def post(picture):
            status = harness.invoke(server.port, picture, "image/jpeg")[0]
            if status != 200:
                raise RuntimeError(f"the endpoint answered {status}")

        sequential = timed(lambda: post(pictures[1]), samples_count)
        clients, requests = 2 * len(workers), max(60, 20 * len(workers))
        counter, lock = iter(range(requests)), threading.Lock()

        def client(offset):
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                post(pictures[(offset + index) % len(pictures)])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        throughput = requests / (time.perf_counter() - began)
        rss = sum(worker.memory_info().rss for worker in server.workers())
        bomb = samples.batch_json(*[samples.pixel_bomb_webp()] * 30)
        refusals = timed(lambda: harness.invoke(server.port, bomb, "application/json"), 5)
        if harness.invoke(server.port, bomb, "application/json")[0] != 413:
            raise RuntimeError("the pixel-bomb batch was not refused")
        served_by = next((name for name in engines() if f"engine {name}," in server.log_tail(10 ** 7)), "?")
    finally:
        server.stop()
    return {"cold start": cold_start, "p50": float(np.percentile(sequential, 50)),
            "p95": float(np.percentile(sequential, 95)), "p99": float(np.percentile(sequential, 99)),
            "throughput": throughput, "clients": clients, "workers": len(workers), "worker rss": rss,
            "refusal": statistics.median(refusals), "engine": served_by}


# ------------------------------------------------------------------------------------------- report
def spread(values, scale=1.0, digits=0):
    values = [v * scale for v in values]
    return (f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
            if len(values) > 1 else f"{values[0]:.{digits}f}")


def record_capacity(rounds, cores, path=scaling.CAPACITY_FILE, today=None):
    """Write the default endpoint's throughput (median of the rounds) where launcher/scaling.py reads it; returns
    the problem when it moved more than scaling.CAPACITY_DRIFT_LIMIT from the figure recorded before, else None."""
    figures = [r["default"]["throughput"] for r in rounds]
    measured = round(statistics.median(figures), 2)
    try:
        recorded = float(scaling.measured_capacity(path)["pictures_per_second"])
    except scaling.LauncherError:
        recorded = None
    Path(path).write_text(json.dumps({
        "pictures_per_second": measured, "spread": [round(min(figures), 2), round(max(figures), 2)], "vcpus": cores,
        "workers": rounds[0]["default"]["workers"], "engine": rounds[0]["default"]["engine"], "settings": "default",
        "date": str(today or datetime.date.today()),
        "machine": f"{cores}-core {platform.machine()} ({platform.processor() or platform.node()}), torch "
                   f"{torch.__version__}",
        "source": f"bench/bench_serving.py, {len(rounds)} rounds, median throughput of the default endpoint "
                  f"({rounds[0]['default']['clients']} clients)"}, indent=2) + "\n")
    print(f"Recorded {measured} pictures/s on {cores} cores in {path} (the autoscaling target follows it)")
    if recorded is not None and scaling.capacity_drift(recorded, measured) > scaling.CAPACITY_DRIFT_LIMIT:
        return (f"the measured capacity {measured} pictures/s is {scaling.capacity_drift(recorded, measured):.0%} "
                f"away from the {recorded} recorded before (limit {scaling.CAPACITY_DRIFT_LIMIT:.0%}): update what "
                "quotes it (README's autoscaling target and cost figures, docs/BENCHMARKS.md)")
    return None


def parse_variant(text):
    name, _, assignments = text.partition(":")
    return name, dict(item.split("=", 1) for item in assignments.split(",") if item)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200, help="sequential samples per latency figure")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant)
    parser.add_argument("--explore", action="store_true", help="also time the served (optimised) model in-process")
    args = parser.parse_args()
    if args.samples < 200 or args.rounds < 3:
        print("note: fewer than 200 samples or 3 rounds: figures for exploring, not for the record")

    cores = settings.cpu_count()
    variants = [("default", {})] + args.variant
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    rounds = []
    try:
        torch.manual_seed(0)
        save_artifact(work / "model", build_model("resnet50", CLASSES),
                      ModelConfig("resnet50", [f"class {i}" for i in range(CLASSES)], 224))
        pictures = [photo_jpeg(seed) for seed in range(FLOOR_BATCH)]
        for number in range(args.rounds):
            figures = {}

            def floors():
                figures.update(measure_floors(work / "model", pictures, cores, args.samples, args.explore))

            def endpoints():
                for name, env in variants:
                    figures[name] = measure_endpoint(work, pictures, args.samples, env)

            for step in ((floors, endpoints) if number % 2 == 0 else (endpoints, floors)):
                step()
            rounds.append(figures)
            default = figures["default"]
            print(f"round {number + 1}: floor {figures['latency floor'] * 1000:.0f} ms, "
                  f"{figures['throughput floor']:.2f}/s; endpoint p50 {default['p50'] * 1000:.0f} ms, "
                  f"{default['throughput']:.2f}/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missed = report(rounds, variants, cores, len(pictures[0]))
    if args.samples >= 200 and args.rounds >= 3:  # figures for the record only
        drifted = record_capacity(rounds, cores)
        if drifted:
            print(f"CAPACITY DRIFTED: {drifted}")
            return 1
    return missed


def report(rounds, variants, cores, picture_bytes):
    column = lambda key, *path: [r[key] if not path else r[key][path[0]] for r in rounds]  # noqa: E731
    print(f"\nResNet-50 224 px, {CLASSES} classes, random weights; a 500x375 JPEG of {picture_bytes // 1024} KB "
          f"per request; {cores} cores, {platform.processor() or platform.machine()}, torch {torch.__version__}; "
          f"{datetime.date.today()}; {len(rounds)} rounds, median (min-max)")
    thread_counts = sorted({1, cores})
    print("\nIn-process (plain eager fp32" + (", and as served: conv+BN folded, channels_last" if "served 1t latency"
                                              in rounds[0] else "") + "), one picture, median latency:")
    for threads in thread_counts:
        line = f"- {threads} thread(s): plain {spread(column(f'plain {threads}t latency'), 1000)} ms"
        if f"served {threads}t latency" in rounds[0]:
            line += f", served {spread(column(f'served {threads}t latency'), 1000)} ms"
        print(line)
    print("\nEngines in-process as served, one picture, median latency; agreement with plain eager fp32 on the "
          f"{FLOOR_BATCH} pictures:")
    missed = []
    for name in engines():
        latencies = ", ".join(f"{t} thread(s) {spread(column(f'{name} {t}t latency'), 1000)} ms" for t in thread_counts)
        agreements = column(f"{name} top-1 agreement")
        print(f"- {name}: {latencies}; top-1 agreement {min(agreements):.0%}, largest probability difference "
              f"{max(column(f'{name} largest difference')):.1e}")
        if min(agreements) < 1:
            missed.append(f"{name}'s top-1 agrees with eager on {min(agreements):.0%} of the pictures (target 100 %)")
    print(f"- throughput: one process batching {FLOOR_BATCH} at {cores} threads "
          f"{spread(column('plain batch throughput'), digits=2)}/s; {cores} single-thread processes "
          f"{spread(column('plain per-core throughput'), digits=2)}/s")
    for key in ("12 MP JPEG decode, full", "12 MP JPEG decode, drafted", "forward under no_grad",
                "forward under inference_mode"):
        if key in rounds[0]:
            print(f"- {key}: {spread(column(key), 1000)} ms")
    print("\n| settings | p50 (ms) | p50 / floor | p95 / p99 (ms) | pictures/s | / floor | cold start (s) | "
          "worker RSS (MiB) | bomb refused in (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _ in variants:
        latency = [r[name]["p50"] / r["latency floor"] for r in rounds]
        throughput = [r[name]["throughput"] / r["throughput floor"] for r in rounds]
        first = rounds[0][name]
        print(f"| {name} ({first['engine']}, {first['workers']} workers, {first['clients']} clients) | "
              f"{spread(column(name, 'p50'), 1000)} | "
              f"{spread(latency, digits=2)}x | {spread(column(name, 'p95'), 1000)} / {spread(column(name, 'p99'), 1000)} | "
              f"{spread(column(name, 'throughput'), digits=2)} | {spread(throughput, digits=2)}x | "
              f"{spread(column(name, 'cold start'), digits=1)} | {spread(column(name, 'worker rss'), 1 / 2**20)} | "
              f"{spread(column(name, 'refusal'), 1000)} |")
        if name == "default":
            if statistics.median(latency) > LATENCY_TARGET:
                missed.append(f"p50 {statistics.median(latency):.2f}x the latency floor (target <= {LATENCY_TARGET}x)")
            if statistics.median(throughput) < THROUGHPUT_TARGET:
                missed.append(f"throughput {statistics.median(throughput):.2f}x the floor "
                              f"(target >= {THROUGHPUT_TARGET}x)")
            stretch = statistics.median(column("default", "p50")) < statistics.median(column("latency floor"))
    print(f"\nFloors: latency {spread(column('latency floor'), 1000)} ms, throughput "
          f"{spread(column('throughput floor'), digits=2)} pictures/s. Stretch (default p50 below the plain "
          f"floor): {'met' if stretch else 'not met'}.")
    for line in missed:
        print(f"TARGET MISSED: {line}")
    if not missed:
        print("Both targets met at the default settings.")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
