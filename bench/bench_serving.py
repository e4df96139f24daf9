#!/usr/bin/env python3
"""Serving benchmark: the endpoint at its default settings against in-process floors, in one run.

    flock /tmp/cpu-heavy.lock .venv/bin/python bench/bench_serving.py [--rounds 3] [--samples 200]
        [--variant NAME:ENV=VALUE,...]...   (extra endpoint settings to measure beside the defaults)
        [--explore]                          (also time each in-process optimisation at each thread count)

        [--floor-seconds 30]                 (how long each throughput configuration runs)

Floors, all in-process through the handler's own decode, preprocessing, forward and JSON answer (ResNet-50, 224 px):
- eager latency floor: the fastest single-picture median of {plain eager fp32, batch norms folded +
  channels_last} at every torch thread count from 1 to the cores, after >= 10 warm-up calls;
- eager throughput floor: the best of P processes x T threads (P x T = cores) x forward batch {1, 4, 8, 16}
  x both forms, every process at once for --floor-seconds (>= 30 s for the record);
- the same two floors for each engine the endpoint may serve (OpenVINO fp32 and int8), so that the serving
  layer's own cost is a figure of its own (the endpoint's p50 over its engine's in-process latency, goal
  <= 1.15x), and a bare forward loop (eager, zeros, all threads) as a reference that shows a slow machine day.
Endpoint: the real `serve` (multi-model-server) on 127.0.0.1 at its default settings (and any
--variant): cold start to the first prediction, >= 200 sequential requests on one kept-alive connection (p50,
p95, p99), the throughput of 2 clients per worker (each on its own connection), the workers' RSS, and the time
to refuse a pixel-bomb batch.
Engines (serving/engine.py): each one in-process as served, one picture, at each thread count, with its
top-1 agreement with plain eager fp32 on the benchmark pictures and its largest probability difference.
Each round measures everything; rounds alternate the order (floors first, then endpoint first). The
figures are the median and the spread (min-max) of the rounds. Targets, at the default settings:
p50 <= 0.5x the eager latency floor, throughput >= 2.0x the eager throughput floor, the workers' RSS together
<= 1.2 GB, cold start to the first answer <= 8 s, and the fp32 engines' top-1 agrees with eager on every
picture (int8's agreement is reported: with random weights it says little; the training job's accuracy gate
is what keeps an int8 model); the script exits 1 when one is missed. The artifact holds an int8 model made
with NNCF on photo-like pictures, as a training job would (speed does not depend on the weights). A full run (>= 3 rounds of >= 200 samples)
records the default endpoint's pictures/s in bench/serving_capacity.json, which launcher/scaling.py derives the
default autoscaling target from, and exits 1 too when that figure moved more than 20 % from the one recorded
before. Random weights: speed does not depend on them. Loopback only; run it under the CPU lock.
"""
import argparse
import datetime
import http.client
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
LATENCY_TARGET, THROUGHPUT_TARGET = 0.5, 2.0
SERVING_COST_GOAL = 1.15  # endpoint p50 / its engine's in-process latency
RSS_TARGET_MIB, COLD_START_TARGET = 1200, 8.0  # the workers together; seconds to the first answer
WARM_UPS = 10
FORWARD_BATCHES = (1, 4, 8, 16)
# name -> (optimize, engine) as load_model takes them; the first two are the eager forms of the floors.
FORMS = {"plain": (False, "torch"), "folded": (True, "torch"), "openvino": (True, "openvino"),
         "openvino-int8": (True, "openvino-int8")}
EAGER = ("plain", "folded")


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


def answer(model, picture, content_type="image/jpeg", max_batch=None):
    """One request's whole work in the handler: decode, preprocess, forward and the JSON answer."""
    request = handler.input_fn(picture, content_type, max_batch=max_batch)
    return handler.output_fn(handler.predict_fn(request, model), settings.JSON)


def single_latency(model, pictures, samples_count):
    for index in range(WARM_UPS):
        answer(model, pictures[index % len(pictures)])
    return statistics.median(timed(lambda: answer(model, pictures[1]), samples_count))


def throughput_process(model_dir, form, threads, batch, seconds, pictures, barrier, results):
    torch.set_num_threads(threads)
    model = load_model(model_dir, *FORMS[form][:1], threads, FORMS[form][1])
    body = samples.batch_json(*[pictures[i % len(pictures)] for i in range(batch)])
    for _ in range(2):
        answer(model, body, "application/json", batch)
    barrier.wait()
    started, answered = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        answer(model, body, "application/json", batch)
        answered += batch
    results.put((answered, time.perf_counter() - started))


def throughput(model_dir, form, processes, threads, batch, seconds, pictures):
    """Pictures/s of `processes` processes of `threads` threads each, answering requests of `batch` pictures
    in one forward pass through the handler, all at once for `seconds`."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=throughput_process,
                               args=(model_dir, form, threads, batch, seconds, pictures, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=600 + seconds) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(answered for answered, _ in outcomes) / max(elapsed for _, elapsed in outcomes)


def splits(cores):
    """(processes, threads) with processes x threads = cores."""
    return [(p, cores // p) for p in range(1, cores + 1) if cores % p == 0]


def bare_forward(model_dir, cores, repeats=30):
    """The eager network's forward on zeros at every thread, nothing else: the machine's speed today."""
    torch.set_num_threads(cores)
    model = load_model(model_dir, False, cores)
    inputs = torch.zeros(1, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(WARM_UPS):
            model.network(inputs)
        return statistics.median(timed(lambda: model.network(inputs), repeats))


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
    return ["torch"] + (["openvino", "openvino-int8"] if engine.openvino_available() else [])


def agreement(model, reference, pictures):
    """(share of pictures whose top-1 class is eager's, largest probability difference) on `pictures`."""
    body = samples.batch_json(*pictures)
    got = handler.predict_fn(handler.input_fn(body, "application/json"), model).probabilities
    expected = handler.predict_fn(handler.input_fn(body, "application/json"), reference).probabilities
    return float((got.argmax(1) == expected.argmax(1)).mean()), float(np.abs(got - expected).max())


def measure_engines(model_dir, pictures, cores):
    """Each engine as served, in-process: its top-1 agreement with plain eager fp32 and largest probability
    difference on the pictures."""
    figures = {}
    torch.set_num_threads(cores)
    reference = load_model(model_dir, False, cores)
    for name in engines():
        model = load_model(model_dir, True, cores, name)
        if model.engine != name:
            raise RuntimeError(f"the {name} engine did not load (see the log)")
        figures[f"{name} top-1 agreement"], figures[f"{name} largest difference"] = agreement(model, reference,
                                                                                                 pictures)
    return figures


def measure_floors(model_dir, pictures, cores, samples_count, seconds, explore):
    """Latency (every thread count) and throughput (every split x forward batch) of each form; the eager floors
    are the best of the two eager forms, each engine's its own."""
    figures = {"bare forward": bare_forward(model_dir, cores)}
    forms = [form for form in FORMS if form in EAGER or form in engines()]
    for form in forms:
        for threads in range(1, cores + 1):
            torch.set_num_threads(threads)
            figures[f"{form} {threads}t latency"] = single_latency(load_model(model_dir, FORMS[form][0], threads,
                                                                              FORMS[form][1]), pictures, samples_count)
        for processes, threads in splits(cores):
            for batch in FORWARD_BATCHES:
                figures[f"{form} {processes}x{threads}t b{batch} throughput"] = throughput(
                    model_dir, form, processes, threads, batch, seconds, pictures)
        figures[f"{form} latency"] = min(figures[f"{form} {t}t latency"] for t in range(1, cores + 1))
        figures[f"{form} throughput"] = max(value for key, value in figures.items()
                                            if key.startswith(f"{form} ") and key.endswith(" throughput")
                                            and "x" in key.split()[1])
    if explore:
        figures.update(explore_extras(model_dir, cores, samples_count))
    figures.update(measure_engines(model_dir, pictures, cores))
    torch.set_num_threads(cores)
    figures["latency floor"] = min(figures[f"{form} latency"] for form in EAGER)
    figures["throughput floor"] = max(figures[f"{form} throughput"] for form in EAGER)
    return figures


def make_artifact(folder, pictures):
    """ResNet-50 with random weights, and its int8 model made with NNCF on photo-like pictures as a training job
    makes it (training/quantize.py), marked accepted: the benchmark measures speed; the gate needs real data."""
    from image_classifier.images import open_rgb
    from image_classifier.model import record_quantization
    from image_classifier.preprocessing import EvalPixels
    from image_classifier.training import quantize

    torch.manual_seed(0)
    network = build_model("resnet50", CLASSES).eval()
    save_artifact(folder, network, ModelConfig("resnet50", [f"class {i}" for i in range(CLASSES)], 224))
    if not engine.openvino_available():
        return
    transform = EvalPixels(224)
    calibration = [transform(open_rgb(photo_jpeg(1000 + seed)))[None] for seed in range(64)]
    pixels = np.stack([transform(open_rgb(picture)) for picture in pictures])
    labels = engine.eager_logits(network, pixels).argmax(1)
    started = time.perf_counter()
    record = quantize.quantize_model(folder, network, 224, calibration, [(pixels, labels)])
    if record["decision"] != "accepted":  # random weights: keep it anyway, for its speed
        import nncf
        import openvino

        int8 = nncf.quantize(openvino.Core().read_model(str(folder / "openvino" / "model.xml")),
                             nncf.Dataset(calibration), subset_size=len(calibration))
        openvino.save_model(int8, str(folder / "openvino" / "model-int8.xml"), compress_to_fp16=False)
    record_quantization(folder, dict(record, decision="accepted", reason="benchmark: random weights, speed only"))
    print(f"int8 model made in {time.perf_counter() - started:.0f} s (gate on eager's own labels: "
          f"{record['decision']}, top-1 agreement {record['int8_valid_acc']:.0%})", flush=True)


# ------------------------------------------------------------------------------------------ endpoint
class Client:
    """One client of the endpoint on one kept-alive connection, as SageMaker's front end keeps its connections
    to a container open: what is timed is the request, not a TCP handshake per request."""

    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=harness.REQUEST_SECONDS)

    def post(self, picture):
        self.connection.request("POST", "/invocations", body=picture, headers={"Content-Type": "image/jpeg"})
        response = self.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the endpoint answered {response.status}")

    def close(self):
        self.connection.close()


def measure_endpoint(base_dir, pictures, samples_count, env):
    server = harness.Server(base_dir, **env)
    try:
        cold_start = server.wait_ready(pictures[0], "image/jpeg", timeout=900)
        workers = server.workers()
        for picture in pictures[:2 * len(workers)]:  # every worker's first-call paths
            harness.invoke(server.port, picture, "image/jpeg")

        one = Client(server.port)
        sequential = timed(lambda: one.post(pictures[1]), samples_count)
        one.close()
        clients, requests = 2 * len(workers), max(60, 20 * len(workers))
        counter, lock = iter(range(requests)), threading.Lock()

        def client(offset):
            own = Client(server.port)
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    own.close()
                    return
                own.post(pictures[(offset + index) % len(pictures)])

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
    parser.add_argument("--explore", action="store_true", help="also time single optimisations in-process")
    parser.add_argument("--floor-seconds", type=float, default=30.0, help="each throughput configuration's run")
    args = parser.parse_args()
    if args.samples < 200 or args.rounds < 3 or args.floor_seconds < 30:
        print("note: fewer than 200 samples or 3 rounds: figures for exploring, not for the record")

    cores = settings.cpu_count()
    variants = [("default", {})] + args.variant
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    rounds = []
    try:
        pictures = [photo_jpeg(seed) for seed in range(FLOOR_BATCH)]
        make_artifact(work / "model", pictures)
        for number in range(args.rounds):
            figures = {}

            def floors():
                figures.update(measure_floors(work / "model", pictures, cores, args.samples, args.floor_seconds,
                                              args.explore))

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
    if args.samples >= 200 and args.rounds >= 3 and args.floor_seconds >= 30:  # figures for the record only
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
    print(f"\nBare forward (eager, zeros, {cores} threads): {spread(column('bare forward'), 1000)} ms")
    forms = [form for form in FORMS if f"{form} latency" in rounds[0]]
    print("\nIn-process through the handler, one picture, median latency (ms) per thread count; best pictures/s "
          "over processes x threads x forward batch:")
    for form in forms:
        latencies = ", ".join(f"{t}t {spread(column(f'{form} {t}t latency'), 1000)}" for t in range(1, cores + 1))
        best = max((key for key in rounds[0] if key.startswith(f"{form} ") and key.endswith(" throughput")
                    and "x" in key.split()[1]), key=lambda key: statistics.median(column(key)))
        print(f"- {form}: {latencies}; best {spread(column(f'{form} throughput'), digits=2)}/s "
              f"({best.split()[1]} {best.split()[2]})")
    missed = []
    for name in engines():
        agreements = column(f"{name} top-1 agreement")
        print(f"- {name} as served: top-1 agreement with plain eager {min(agreements):.0%} of {FLOOR_BATCH} pictures, "
              f"largest probability difference {max(column(f'{name} largest difference')):.1e}")
        if min(agreements) < 1 and name != "openvino-int8":
            missed.append(f"{name}'s top-1 agrees with eager on {min(agreements):.0%} of the pictures (target 100 %)")
    for key in ("12 MP JPEG decode, full", "12 MP JPEG decode, drafted", "forward under no_grad",
                "forward under inference_mode"):
        if key in rounds[0]:
            print(f"- {key}: {spread(column(key), 1000)} ms")
    print(f"\nEager floors: latency {spread(column('latency floor'), 1000)} ms, throughput "
          f"{spread(column('throughput floor'), digits=2)} pictures/s.")
    print("\n| settings | p50 (ms) | / eager floor | / engine in-process | p95 / p99 (ms) | pictures/s | / eager floor "
          "| / engine floor | cold start (s) | workers' RSS (MiB) | bomb refused in (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, _ in variants:
        served = rounds[0][name]["engine"]
        latency = [r[name]["p50"] / r["latency floor"] for r in rounds]
        throughput_ratio = [r[name]["throughput"] / r["throughput floor"] for r in rounds]
        own = f"{served} latency" in rounds[0]
        layer = [r[name]["p50"] / r[f"{served} latency"] for r in rounds] if own else None
        engine_throughput = [r[name]["throughput"] / r[f"{served} throughput"] for r in rounds] if own else None
        first = rounds[0][name]
        print(f"| {name} ({served}, {first['workers']} workers, {first['clients']} clients) | "
              f"{spread(column(name, 'p50'), 1000)} | {spread(latency, digits=2)}x | "
              f"{spread(layer, digits=2) + 'x' if own else '-'} | "
              f"{spread(column(name, 'p95'), 1000)} / {spread(column(name, 'p99'), 1000)} | "
              f"{spread(column(name, 'throughput'), digits=2)} | {spread(throughput_ratio, digits=2)}x | "
              f"{spread(engine_throughput, digits=2) + 'x' if own else '-'} | "
              f"{spread(column(name, 'cold start'), digits=1)} | {spread(column(name, 'worker rss'), 1 / 2**20)} | "
              f"{spread(column(name, 'refusal'), 1000)} |")
        if name != "default":
            continue
        checks = [(statistics.median(latency) <= LATENCY_TARGET,
                   f"p50 {statistics.median(latency):.2f}x the eager latency floor (target <= {LATENCY_TARGET}x)"),
                  (statistics.median(throughput_ratio) >= THROUGHPUT_TARGET,
                   f"throughput {statistics.median(throughput_ratio):.2f}x the eager throughput floor "
                   f"(target >= {THROUGHPUT_TARGET}x)"),
                  (statistics.median(column(name, "worker rss")) / 2**20 <= RSS_TARGET_MIB,
                   f"the workers hold {statistics.median(column(name, 'worker rss')) / 2**20:.0f} MiB together "
                   f"(target <= {RSS_TARGET_MIB})"),
                  (statistics.median(column(name, "cold start")) <= COLD_START_TARGET,
                   f"cold start {statistics.median(column(name, 'cold start')):.1f} s (target <= {COLD_START_TARGET})")]
        missed += [problem for met, problem in checks if not met]
        if own and statistics.median(layer) > SERVING_COST_GOAL:
            print(f"goal not met: the endpoint's p50 is {statistics.median(layer):.2f}x its engine's in-process "
                  f"latency (goal <= {SERVING_COST_GOAL}x)")
    for line in missed:
        print(f"TARGET MISSED: {line}")
    if not missed:
        print("Every target met at the default settings.")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
