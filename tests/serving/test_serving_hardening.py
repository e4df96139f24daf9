"""Issue 20 on the real `serve` (multi-model-server under Java): hostile pictures refused from their bytes,
a batch limit derived from a timed forward pass, fixed HTTP reason phrases, and a server whose workers are
all dead that stops answering /ping with 200. One server for the class; its last test kills its workers."""
import http.client
import json
import re
import shutil
import time

import psutil
import pytest

import serving_harness as harness
import serving_samples as samples
from image_classifier.serving import serve, settings
from serving_harness import invoke, request

pytestmark = [harness.require_java(pytest), pytest.mark.slow]

WORKERLESS_SECONDS = 5  # short, so that the test of dead workers takes seconds
# A large input size, so that a forward pass is slow enough for the derived batch limit to be below
# its ceiling with a 1 s allowance (ResNets take any input size; only model.json says which).
IMAGE_SIZE = 768


def reason_of(port, body, content_type):
    """(status, HTTP reason phrase) of one invocation."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=harness.REQUEST_SECONDS)
    try:
        connection.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        response.read()
        return response.status, response.reason
    finally:
        connection.close()


def mms_python_processes(server):
    """Every Python process of MMS: the per-model listener (a child of the Java frontend) and the workers
    it forks."""
    def is_mms_python(process):
        try:
            return "model_service_worker.py" in " ".join(process.cmdline())
        except psutil.Error:
            return False

    return [p for p in server.processes() if is_mms_python(p)]


@pytest.mark.slow
class TestHardenedServer:
    @pytest.fixture(scope="class")
    def server(self, trained_model_dir, tmp_path_factory):
        base_dir = tmp_path_factory.mktemp("opt_ml")
        shutil.copytree(trained_model_dir, base_dir / "model")
        metadata = json.loads((base_dir / "model" / "model.json").read_text())
        (base_dir / "model" / "model.json").write_text(json.dumps(dict(metadata, image_size=IMAGE_SIZE)))
        server = harness.Server(base_dir, SAGEMAKER_MODEL_SERVER_WORKERS=1,
                                **{settings.BATCH_SECONDS_ENV: 1, settings.WORKERLESS_SECONDS_ENV: WORKERLESS_SECONDS})
        try:
            server.wait_ready(samples.png())
            yield server
        finally:
            server.stop()

    def test_the_progressive_scan_bomb_is_a_4xx_in_under_a_second_and_the_worker_lives(self, server):
        bomb = samples.scan_bomb_jpeg()  # 7000x7000, 3,000 repeated scans: ~16 s of decoding if accepted
        workers = {p.pid for p in server.workers()}
        started = time.perf_counter()
        status, _, body = invoke(server.port, bomb, "image/jpeg")
        elapsed = time.perf_counter() - started
        assert status == 413 and "scans" in json.loads(body)["message"], body
        assert elapsed < 1, f"{elapsed:.2f} s"
        assert invoke(server.port, samples.jpeg(), "image/jpeg")[0] == 200
        assert {p.pid for p in server.workers()} == workers

    def test_an_upsampling_bomb_is_a_413(self, server):
        """A few hundred bytes of PNG that the evaluation transform would resize to billions of pixels."""
        status, _, body = invoke(server.port, samples.thin_png(), "image/png")
        assert status == 413 and "resized to" in json.loads(body)["message"], body
        assert invoke(server.port, samples.png((1, 1)), "image/png")[0] == 200  # a tiny picture is fine

    def test_the_batch_limit_is_derived_from_a_timed_forward_pass(self, server):
        [limit] = {int(n) for n in re.findall(r"Batch limit: (\d+) picture\(s\) per request \(a forward pass",
                                              server.log.read_text(errors="replace"))}
        assert limit < settings.DEFAULT_MAX_BATCH  # IMAGE_SIZE px with 1 s allowed: below the ceiling
        status, _, body = invoke(server.port, samples.batch_json(*[samples.png()] * (limit + 1)), "application/json")
        assert status == 413 and f"at most {limit}." in json.loads(body)["message"], body
        status, _, body = invoke(server.port, samples.batch_json(*[samples.png()] * limit), "application/json")
        assert status == 200 and len(json.loads(body)["predictions"]) == limit

    def test_reason_phrases_are_the_standard_ones(self, server):
        assert reason_of(server.port, samples.random_bytes(), "image/jpeg") == (400, "Bad Request")
        assert reason_of(server.port, samples.bomb_png(), "image/png") == (413, "Request Entity Too Large")
        # A JSON number of 5,000 digits: Python's parser raises ValueError (not JSONDecodeError), which
        # was a 500 whose reason phrase was the exception's text; now a 400 like any bad JSON.
        assert reason_of(server.port, '{"instances": ' + "9" * 5000 + "}", "application/json") == (400, "Bad Request")
        assert invoke(server.port, samples.jpeg(), "image/jpeg")[0] == 200

    def test_with_every_worker_dead_ping_stops_answering_200(self, server):
        """MMS restarts a killed worker, not its killed listener: with both gone no worker comes back, and
        MMS's own /ping would still answer 200."""
        assert request(server.port, "GET", "/ping")[0] == 200
        victims = mms_python_processes(server)
        assert len(victims) >= 2  # the listener and its worker
        killed = time.monotonic()
        for process in victims:
            process.kill()
        psutil.wait_procs(victims, timeout=10)
        deadline = killed + WORKERLESS_SECONDS + 2 * settings.WORKER_POLL_SECONDS + 10
        while time.monotonic() < deadline:
            try:
                if request(server.port, "GET", "/ping", timeout=5)[0] != 200:
                    break
            except OSError:  # serve stopped MMS: nothing listens any more
                break
            time.sleep(0.2)
        stopped_after = time.monotonic() - killed
        assert stopped_after < WORKERLESS_SECONDS + 2 * settings.WORKER_POLL_SECONDS + 10, server.log_tail()
        assert stopped_after >= WORKERLESS_SECONDS - 1  # the set time, not at once
        assert server.process.wait(timeout=60) == serve.WORKERLESS_EXIT_CODE
        assert "No model worker has been ready for 5 s" in server.log_tail(20_000)
