"""Batch transform on this machine: SageMaker's job over a local folder, and the summary of its output.

SageMaker's batch transform (SplitType None) sends every object under the input prefix as one request
to `/invocations` and writes the answer to `<output>/<the object's key relative to the prefix>.out`. A
refused object does not stop it: it processes every object, uploads the outputs that succeeded, then
marks the job Failed. `run` does the same over a folder, against the real `serve` started by
`local.serving.deploy` (as a process or in the image), with a second request queued per worker, so the
same `.out` files come out (each written atomically: a crash leaves whole files only, which `--resume`
skips). `summarize` reads such a folder (local or downloaded from S3) into a CSV: file, top-1 label,
probability, top-k; an unreadable `.out` is counted as failed, one with no input picture (a stale output
of an earlier run) is flagged and left out.
"""
import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import os
import shutil
import sys
import time
import urllib.error
from pathlib import Path

import psutil

from image_classifier import contract
from image_classifier.serving import settings as serving_settings

from . import LauncherError, api_rules
from .local import client, serving, trees
from .terminal import printable

OUT_SUFFIX = ".out"  # SageMaker's name for a transform's answer: <input file name>.out
SUMMARY_FILE = "summary.csv"
SUMMARY_COLUMNS = ("file", "label", "probability", "top_k")
DEFAULT_PORT = 8090  # not deploy's 8080, so a batch job can run beside a served model
# Requests in flight per model-server worker: while a worker computes one picture the next waits in
# MMS's queue, so the worker never idles during an HTTP round trip; more only lengthens the queue.
REQUESTS_PER_WORKER = 2
PROGRESS_EVERY_SECONDS = 0.5
# A served ResNet-50 worker's memory (serving/settings.py, measured): a local job starts no more workers than
# the free memory holds.
WORKER_MEMORY_BYTES = serving_settings.WORKER_MEMORY_MIB << 20


def concurrent_requests(workers):
    """Requests to keep in flight against `workers` model-server workers (SageMaker's MaxConcurrentTransforms)."""
    return REQUESTS_PER_WORKER * workers


def batch_serving_settings(environ=None):
    """The serving settings a local job starts `serve` with: one single-thread worker per core, unless
    the shell sets the workers or threads itself, or a GPU may be there (then `serve`'s defaults).

    Why not `serve`'s CPU default (one worker per core, each request on every core while the other workers
    are idle): a lone request's latency matters there. A batch job wants only throughput, and on a
    workstation it shares the cores with whatever else runs: a multi-thread request's threads wait for each
    other at every barrier, so when one of its cores is taken the others idle. Measured with the earlier
    default (one worker per two cores, two threads each), on 2 cores with one kept busy: 0.9 pictures/s,
    where one single-thread worker per core did 12 (bench/bench_transform.py --compare --busy 1,
    docs/BENCHMARKS.md)."""
    environ = os.environ if environ is None else environ
    chosen = (serving_settings.WORKERS_ENV, serving_settings.TORCH_THREADS_ENV)
    if any(environ.get(name, "").strip() for name in chosen) or shutil.which("nvidia-smi"):
        return {}
    fit_in_memory = int(psutil.virtual_memory().available // WORKER_MEMORY_BYTES)
    workers = max(1, min(serving_settings.cpu_count(), fit_in_memory))
    return {serving_settings.WORKERS_ENV: str(workers), serving_settings.TORCH_THREADS_ENV: "1"}


def local_workers(environ=None):
    """The workers a local job's `serve` starts (SAGEMAKER_MODEL_SERVER_WORKERS as set in `environ`, else
    the serving default on CPU)."""
    environ = os.environ if environ is None else environ
    try:
        share = serving_settings.env_bool(serving_settings.SHARE_CORES_ENV, serving_settings.DEFAULT_SHARE_CORES,
                                          environ=environ)
        default = serving_settings.default_workers(0, serving_settings.cpu_count(), share)
        return serving_settings.env_int(serving_settings.WORKERS_ENV, default, environ=environ,
                                        maximum=serving_settings.MAX_WORKERS)
    except ValueError as error:
        raise LauncherError(str(error)) from None


@contextlib.contextmanager
def environment(settings):
    """`settings` in this process's environment while the server starts: `serve` inherits them as a
    process, and `deploy --local docker` passes the serving settings of the shell into the container."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def input_files(data_dir):
    """Every file under `data_dir`, as SageMaker lists every object under a prefix (hidden files excepted:
    they are this machine's, e.g. the sample's `.complete` marker)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise LauncherError(f"--data {data_dir}: no such folder.")
    files = sorted(path for path in data_dir.rglob("*") if path.is_file()
                   and not any(part.startswith(".") for part in path.relative_to(data_dir).parts))
    if not files:
        raise LauncherError(f"--data {data_dir}: no files in it.")
    return files


def out_path(out_dir, data_dir, file):
    relative = Path(file).relative_to(data_dir)
    return Path(out_dir) / relative.parent / (relative.name + OUT_SUFFIX)


class Progress:
    """One line on stderr, rewritten: pictures done, of how many, pictures/s, bad ones so far."""

    def __init__(self, total, stream=None):
        self.total, self.started, self.shown = total, time.perf_counter(), 0.0
        self.stream = stream or sys.stderr  # looked up now: the caller may have redirected it

    def rate(self, done):
        return done / max(time.perf_counter() - self.started, 1e-9)

    def update(self, done, bad, final=False):
        now = time.perf_counter()
        if not final and now - self.shown < PROGRESS_EVERY_SECONDS:
            return
        self.shown = now
        width = 30
        filled = width * done // max(self.total, 1)
        bad_note = f", {bad} bad" if bad else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} pictures, "
                          f"{self.rate(done):.1f} pictures/s{bad_note}" + ("\n" if final else ""))
        self.stream.flush()


def transform_one(port, file):
    """(status, body) of one picture sent as SageMaker's transform sends it: its bytes, its content type."""
    return client.invoke(port, Path(file).read_bytes(), client.content_type_of(Path(file)))


def run(data_dir, out_dir, port, max_concurrent, stop_on_bad=False, progress_stream=None, files=None):
    """Send every file under `data_dir` (`files`, when the caller has listed them already) to the model server
    on `port`, `max_concurrent` at a time, writing `<file>.out` under `out_dir` (atomically). Returns (pictures
    done, [(file, status, message)] of the bad ones). With `stop_on_bad` the first bad picture stops the job
    (what is written stays) with its name."""
    files = input_files(data_dir) if files is None else files
    progress = Progress(len(files), progress_stream)
    done, bad = 0, []
    pending = iter(files)
    with concurrent.futures.ThreadPoolExecutor(max_concurrent) as pool:
        in_flight = {}

        def submit_next():
            file = next(pending, None)
            if file is not None:
                in_flight[pool.submit(transform_one, port, file)] = file

        for _ in range(max_concurrent):
            submit_next()
        while in_flight:
            finished, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                file = in_flight.pop(future)
                try:
                    status, body = future.result()
                except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                    raise LauncherError(f"{file}: the model server on port {port} did not answer "
                                        f"({getattr(error, 'reason', error)}).") from None
                if status == 200:
                    target = out_path(out_dir, data_dir, file)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    contract.atomic_write(target, lambda tmp, body=body: Path(tmp).write_bytes(body))
                    done += 1
                else:
                    bad.append((file, status, client.error_message(body)))
                    if stop_on_bad:
                        progress.update(done, len(bad), final=True)
                        for other in in_flight:
                            other.cancel()
                        raise LauncherError(
                            f"{printable(file)}: refused with {status}: {printable(bad[-1][2])}. --stop-on-bad "
                            f"stopped the job there ({done} .out file(s) written in {printable(out_dir)}).")
                submit_next()
            progress.update(done + len(bad), len(bad))
    progress.update(done + len(bad), len(bad), final=True)
    return done, bad


def read_out(path):
    """The top-k list of one `.out` file (the serving contract's answer for one picture)."""
    try:
        labels = json.loads(Path(path).read_bytes())["predictions"][0]
        for item in labels[:1]:
            str(item["label"]), float(item["probability"])
        return labels
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise LauncherError(f"{printable(path)}: not a prediction ({printable(error)}).") from None


# A spreadsheet reads a cell starting with one of these as a formula (CSV injection): such cells get a leading '.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text):
    text = str(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


@dataclasses.dataclass
class Summary:
    csv_path: Path
    counts: collections.Counter      # top-1 label -> pictures
    unreadable: list                 # .out files that are not a prediction (truncated, garbled): failed
    stale: list                      # .out files with no input picture (an earlier run's): left out


def summarize(out_dir, csv_path=None, inputs=None):
    """Write the CSV of every `.out` under `out_dir` (file, top-1 label, probability, top-k as
    label:probability pairs). `inputs`: (data folder, its files), when known: `.out` files with no input
    are stale, flagged and left out."""
    out_dir = Path(out_dir)
    outs = sorted(out_dir.rglob("*" + OUT_SUFFIX)) if out_dir.is_dir() else []
    if not outs:
        raise LauncherError(f"{printable(out_dir)}: no {OUT_SUFFIX} files in it.")
    stale = []
    if inputs is not None:
        data_dir, files = inputs
        expected = {out_path(out_dir, data_dir, file) for file in files}
        stale = [path for path in outs if path not in expected]
        outs = [path for path in outs if path in expected]
    summary = Summary(Path(csv_path) if csv_path else out_dir / SUMMARY_FILE, collections.Counter(), [], stale)
    rows = []
    for path in outs:
        try:
            labels = read_out(path)
        except LauncherError:
            summary.unreadable.append(path)
            continue
        top = labels[0]
        summary.counts[top["label"]] += 1
        rows.append([str(path.relative_to(out_dir))[:-len(OUT_SUFFIX)], top["label"], f"{top['probability']:.6f}",
                     " ".join(f"{item['label']}:{item['probability']:.6f}" for item in labels)])

    def write(tmp):
        with open(tmp, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(SUMMARY_COLUMNS)
            writer.writerows([csv_cell(cell) for cell in row] for row in rows)

    contract.atomic_write(summary.csv_path, write)
    return summary


def print_summary(summary, out_dir):
    """The label counts and what could not be summarised; True when every output was read."""
    print(f"Summary of {sum(summary.counts.values())} picture(s): {printable(summary.csv_path)}\nTop-1 labels:")
    if summary.counts:
        print_counts(summary.counts)
    if summary.stale:
        print(f"{len(summary.stale)} stale {OUT_SUFFIX} file(s) with no input picture (an earlier run's?), "
              "not summarised:")
        for path in summary.stale:
            print(f"  {printable(Path(path).relative_to(out_dir))}")
    if summary.unreadable:
        print(f"{len(summary.unreadable)} {OUT_SUFFIX} file(s) are not a prediction (truncated?), counted as failed:")
        for path in summary.unreadable:
            print(f"  {printable(Path(path).relative_to(out_dir))}")
    return not summary.unreadable


def print_counts(counts):
    labels = {label: printable(label) for label in counts}
    width = max(len(shown) for shown in labels.values())
    for label, count in counts.most_common():
        print(f"  {labels[label]:<{width}}  {count}")


def local(data_dir, out_dir, model=None, mode="auto", port=DEFAULT_PORT, max_concurrent=None, stop_on_bad=False,
          resume=False):
    """The whole local job: serve the model, transform the folder (`resume`: the pictures without an output),
    stop the server, summarize. Returns (pictures done, bad ones, whether every output could be summarised)."""
    settings = batch_serving_settings()
    workers = local_workers({**os.environ, **settings})
    max_concurrent = max_concurrent or concurrent_requests(workers)
    if max_concurrent < 1:
        raise LauncherError("--max-concurrent must be at least 1.")
    every_file = input_files(data_dir)  # checked before the server starts
    files = every_file
    if resume:
        files = [file for file in every_file if not out_path(out_dir, data_dir, file).is_file()]
        print(f"--resume: {len(every_file) - len(files)} of {len(every_file)} picture(s) already have their "
              f"{OUT_SUFFIX} file.", flush=True)
    if not files:
        summary = summarize(out_dir, inputs=(data_dir, every_file))
        return 0, [], print_summary(summary, Path(out_dir))
    with environment(settings):
        serving.deploy(model=model, port=port, mode=mode, detach=True)
    try:
        print(f"Transforming {len(files)} file(s) from {data_dir} into {out_dir}: {workers} model-server "
              f"worker(s), {max_concurrent} request(s) in flight ...", flush=True)
        started = time.perf_counter()
        done, bad = run(data_dir, out_dir, port, max_concurrent, stop_on_bad, files=files)
        seconds = time.perf_counter() - started
    finally:
        serving.delete(port)
        shutil.rmtree(trees.server_dir(port) / "model", ignore_errors=True)  # a copy; the log stays
    print(f"{done} picture(s) transformed in {seconds:.1f} s ({done / max(seconds, 1e-9):.1f} pictures/s).")
    if bad:
        print(f"{len(bad)} picture(s) refused, no {OUT_SUFFIX} file for them:")
        for file, status, message in bad:
            print(f"  {printable(file)}: {status}: {printable(message)}")
    complete = True
    if done or resume:
        complete = print_summary(summarize(out_dir, inputs=(data_dir, every_file)), Path(out_dir))
    return done, bad, complete


# ------------------------------------------------------------------------------------------ SageMaker
TRANSFORM_INSTANCE = "ml.m5.xlarge"  # CPU, 4 vCPUs: four model-server workers (serve's default, one per core)
# (vCPUs, GPUs) of common CreateTransformJob instance types (AWS's published figures; every one in botocore's
# TransformInstanceType, which has no ml.c5.large: the c5 family starts at xlarge there). `serve` starts
# its workers from these (serving.settings.default_workers), and MaxConcurrentTransforms follows.
INSTANCE_RESOURCES = {
    "ml.m5.large": (2, 0), "ml.m5.xlarge": (4, 0), "ml.m5.2xlarge": (8, 0), "ml.m5.4xlarge": (16, 0),
    "ml.c5.xlarge": (4, 0), "ml.c5.2xlarge": (8, 0), "ml.c5.4xlarge": (16, 0),
    "ml.g4dn.xlarge": (4, 1), "ml.g4dn.2xlarge": (8, 1), "ml.g5.xlarge": (4, 1), "ml.g5.2xlarge": (8, 1),
}
# The request body cap a transform job may send: the model server's own cap, so a picture the server
# would refuse with 413 is refused by SageMaker before it is sent.
MAX_PAYLOAD_MB = contract.DEFAULT_PAYLOAD_CAP_MB


def max_concurrent_transforms(instance_type):
    """Requests in flight per instance: two per model-server worker, the workers being what `serve`
    starts on that instance by default (one per GPU, else one per vCPU), within SageMaker's cap."""
    if instance_type not in INSTANCE_RESOURCES:
        raise LauncherError(f"--instance-type {instance_type}: its vCPUs and GPUs are not known here, so its "
                            "model-server workers are not either: pass --max-concurrent N (two per worker)")
    vcpus, gpus = INSTANCE_RESOURCES[instance_type]
    wanted = concurrent_requests(serving_settings.default_workers(gpus, vcpus))
    return min(wanted, api_rules.max_concurrent_allowed(MAX_PAYLOAD_MB))  # SageMaker's cap on the product


def job_content_type(keys):
    """The one ContentType of a transform job: the pictures' own when they all share it, else
    application/x-image (the server reads any picture format under it)."""
    types = {client.content_type_of(Path(key)) for key in keys}
    return types.pop() if len(types) == 1 else client.RAW_PICTURE_TYPE


def s3_keys(s3, uri):
    """Every object key in the S3 folder `uri` and below it (what the transform job will send), not in its
    siblings (`photos` also matching `photos-old`)."""
    from .s3_upload import split_s3_uri

    bucket, prefix = split_s3_uri(uri)
    prefix = f"{prefix}/" if prefix else ""
    return [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])]
