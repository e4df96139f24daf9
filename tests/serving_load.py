"""Mixed good and hostile load on a local `serve`, bounded in time and count, loopback only.

Used by tests/serving/test_serving_load.py (short) and bench/soak_serving.py (the full 8 clients x 60 s). Each
client sends the bodies of `mixed_bodies()` in turn, from its own offset; every answer must have the
status its body expects. A sampler records the workers' total RSS once a second.
"""
import os
import threading
import time
from dataclasses import dataclass, field

import psutil

import serving_samples as samples
from serving_harness import invoke

REQUEST_SECONDS = 60


@dataclass(frozen=True)
class Body:
    name: str
    data: bytes
    content_type: str
    expected: int
    headers: tuple = ()


def mixed_bodies():
    """Good requests and the hostile ones of issue 12, each with the status it must get."""
    return [
        Body("jpeg", samples.jpeg((320, 240)), "image/jpeg", 200),
        Body("random-bytes", samples.random_bytes(), "image/jpeg", 400),
        Body("png-batch", samples.batch_json(*[samples.png((64, 48))] * 4).encode(), "application/json", 200),
        Body("pixel-bomb-batch", samples.batch_json(*[samples.pixel_bomb_webp()] * 30).encode(),
             "application/json", 413),
        Body("12mp-jpeg", samples.big_jpeg(), "image/jpeg", 200),
        Body("deep-json", samples.nested_json().encode(), "application/json", 400),
        Body("cmyk-jpeg", samples.cmyk_jpeg(), "image/jpeg", 200),
        Body("over-the-cap", os.urandom(7 * 1024 * 1024), "image/jpeg", 413),
        Body("exif-jpeg", samples.exif_rotated_jpeg(), "image/jpeg", 200),
        Body("wrong-types", b'{"instances": [{"b64": 5}]}', "application/json", 400),
        Body("rgba-png", samples.rgba_png(), "image/png", 200),
        Body("bomb-png", samples.bomb_png(), "image/png", 413),
        Body("16bit-png", samples.png_16bit(), "image/png", 200),
        Body("ico", samples.ico(), "application/x-image", 400),
        Body("csv", b"1,2,3", "text/csv", 415),
        Body("bad-top-k", samples.png(), "image/png", 400, (("X-Amzn-SageMaker-Custom-Attributes", "top_k=0"),)),
        Body("49mp-webp", samples.pixel_bomb_webp(), "application/x-image", 200),
    ]


@dataclass
class LoadResult:
    seconds: float = 0.0
    answers: list = field(default_factory=list)  # (start time, body name, expected, got)
    rss: list = field(default_factory=list)  # (time, {worker pid: RSS in bytes})
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def unexpected(self, after=0.0):
        return [(name, expected, got) for started, name, expected, got in self.answers
                if got != expected and started >= after]

    @property
    def requests_per_s(self):
        return len(self.answers) / self.seconds if self.seconds else 0.0


def client(port, bodies, offset, deadline, budget, result):
    index = offset
    while time.monotonic() < deadline and budget.acquire(blocking=False):
        body = bodies[index % len(bodies)]
        index += 1
        started = time.monotonic()
        try:
            status = invoke(port, body.data, body.content_type, timeout=REQUEST_SECONDS, **dict(body.headers))[0]
        except OSError as error:  # a reset or a timeout: never expected
            status = type(error).__name__
        with result.lock:
            result.answers.append((started, body.name, body.expected, status))


def sample_rss(server, stop, result, interval=1.0):
    while not stop.wait(interval):
        sizes = {}
        for worker in server.workers():
            try:
                sizes[worker.pid] = worker.memory_info().rss
            except psutil.Error:
                pass
        result.rss.append((time.monotonic(), sizes))


def run_load(server, clients=8, seconds=60, max_requests=100_000, bodies=None, during=None):
    """`clients` threads for `seconds` (at most `max_requests` in all); `during(result)` runs in this
    thread meanwhile (e.g. to kill a worker), then the clients finish."""
    bodies = bodies or mixed_bodies()
    result, stop = LoadResult(), threading.Event()
    budget = threading.Semaphore(max_requests)
    started = time.monotonic()
    deadline = started + seconds
    threads = [threading.Thread(target=client, args=(server.port, bodies, i * 3, deadline, budget, result))
               for i in range(clients)]
    sampler = threading.Thread(target=sample_rss, args=(server, stop, result))
    for thread in threads + [sampler]:
        thread.start()
    try:
        if during:
            during(result)
    finally:
        for thread in threads:
            thread.join(timeout=seconds + REQUEST_SECONDS + 30)
        stop.set()
        sampler.join()
    result.seconds = time.monotonic() - started
    return result


def rss_growth(result):
    """{worker pid: (lowest RSS in the middle third of the run, lowest RSS in the last third)} for the
    workers alive throughout. The lowest, because one sample can fall in the middle of a 49 MP decode
    (a few hundred MB for a moment); a leak raises the floor between requests. The first third lets
    every body kind run several times."""
    start, third = result.rss[0][0], result.seconds / 3

    def lowest(begin, end):
        windows = [sizes for when, sizes in result.rss if begin <= when - start < end]
        pids = set.intersection(*(set(sizes) for sizes in windows)) if windows else set()
        return {pid: min(sizes[pid] for sizes in windows) for pid in pids}

    middle, last = lowest(third, 2 * third), lowest(2 * third, float("inf"))
    return {pid: (middle[pid], last[pid]) for pid in middle if pid in last}


def idle_rss(server, settle_seconds=2.0):
    """{worker pid: RSS} once the last answers are out and the workers are idle. Idle, because under load a
    sample catches whatever request a worker is in (a 49 MP decode is a few hundred MB for a moment); a
    leak raises what a worker holds between requests."""
    time.sleep(settle_seconds)
    return {process.pid: process.memory_info().rss for process in server.workers()}


def kill_a_worker(server, at_seconds, report):
    """A `during` hook: SIGKILL one worker after `at_seconds`, then wait for its replacement."""
    def during(result):
        time.sleep(at_seconds)
        workers = server.workers()
        victim = workers[0]
        report["killed_at"], report["victim"] = time.monotonic(), victim.pid
        victim.kill()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = {p.pid for p in server.workers()}
            if len(pids) == len(workers) and victim.pid not in pids:
                report["replaced_at"], report["workers"] = time.monotonic(), pids
                return
            time.sleep(0.2)
    return during
