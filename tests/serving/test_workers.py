"""serve's watch on the workers (serving/workers.py) without a model server: the start-up allowance and the
workerless limit of WorkerWatch, MMS's management answer read over a unix socket, and the worker processes
counted below the frontend."""
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
import time

import psutil
import pytest

from image_classifier.serving import workers


def test_the_first_worker_has_the_start_up_allowance_then_the_workerless_limit():
    watch = workers.WorkerWatch(limit=10, startup=60, now=100)
    assert watch.update(0, 130) and watch.update(0, 159.9)  # loading the model: no worker yet, still healthy
    assert not watch.update(0, 160)
    watch = workers.WorkerWatch(limit=10, startup=60, now=100)
    assert watch.update(1, 120)  # ready: from now on `limit` seconds without one
    assert watch.update(0, 129.9) and not watch.update(0, 130)
    assert watch.update(2, 131)  # a worker back (restarted by MMS): healthy again
    assert watch.update(0, 140.9) and not watch.update(0, 141)


def test_a_start_up_allowance_shorter_than_the_limit_is_the_limit():
    watch = workers.WorkerWatch(limit=30, startup=5, now=0)
    assert watch.update(0, 29.9) and not watch.update(0, 30)


class _Management(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def management(tmp_path):
    """MMS's management API on a unix socket; `answer` = (status, body) for GET /models/<name>."""
    answer = {"status": 200, "body": b"[]", "paths": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            answer["paths"].append(self.path)
            known = self.path == "/models/model"  # MMS: 404 for a model it does not serve
            self.send_response(answer["status"] if known else 404)
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        def address_string(self):
            return "unix"

        def log_message(self, *args):
            pass

    path = tmp_path / "management.sock"
    server = _Management(str(path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, answer
    server.shutdown()
    server.server_close()


def _model(*statuses):
    return {"modelName": "model", "workers": [{"id": str(i), "status": s} for i, s in enumerate(statuses)]}


def test_ready_workers_counts_the_ready_ones_as_mms_describes_them(management):
    path, answer = management
    answer["body"] = json.dumps([_model("READY", "UNLOADING", "READY")]).encode()  # MMS 1.1: a list
    assert workers.ready_workers(path, "model") == 2 and answer["paths"] == ["/models/model"]
    answer["body"] = json.dumps(_model("READY")).encode()  # other versions: the model itself
    assert workers.ready_workers(path, "model") == 1
    answer["body"] = json.dumps([{"modelName": "model", "workers": None}, "junk", _model("STARTING")]).encode()
    assert workers.ready_workers(path, "model") == 0


@pytest.mark.parametrize("status, body", [(404, b'{"code": 404}'), (200, b"not json"), (500, b"")])
def test_ready_workers_is_zero_when_the_api_does_not_answer_properly(management, status, body):
    path, answer = management
    answer["status"], answer["body"] = status, body
    assert workers.ready_workers(path, "model") == 0


def test_ready_workers_is_zero_without_a_management_socket(tmp_path):
    assert workers.ready_workers(tmp_path / "none.sock", "model", timeout=1) == 0


def test_ready_workers_gives_up_on_a_frontend_that_does_not_answer(tmp_path):
    """A hung frontend (it accepts and never answers) counts as no worker, after the timeout."""
    import socket

    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "hung.sock"))
    listening.listen()
    try:
        started = time.monotonic()
        assert workers.ready_workers(tmp_path / "hung.sock", "model", timeout=0.5) == 0
        assert time.monotonic() - started < 5
    finally:
        listening.close()


def test_live_workers_are_mms_workers_forked_by_an_mms_process(tmp_path, management):
    """Only a model_service_worker.py process whose parent is one too (the per-model listener's fork), below
    the process asked about; and ready_count is the smaller of MMS's count and the live one."""
    script = tmp_path / "model_service_worker.py"
    script.write_text("import subprocess, sys, time\n"
                      "if sys.argv[1] == 'listener':\n"
                      "    children = [subprocess.Popen([sys.executable, __file__, 'worker']) for _ in range(2)]\n"
                      "    print('up', flush=True)\n"
                      "time.sleep(600)\n")
    listeners = [subprocess.Popen([sys.executable, str(script), "listener"], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    forked = []
    try:
        for listener in listeners:
            assert listener.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 30
        while workers.live_workers(os.getpid()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers.live_workers(listeners[0].pid) == 2  # its own two; the listener itself is not a worker
        assert workers.live_workers(os.getpid()) == 4  # from the frontend: both listeners' workers
        path, answer = management
        answer["body"] = json.dumps([_model("READY", "READY", "READY")]).encode()
        assert workers.ready_count(path, "model", listeners[0].pid) == 2  # the smaller count: live
        answer["body"] = json.dumps([_model("READY")]).encode()
        assert workers.ready_count(path, "model", listeners[0].pid) == 1  # the smaller count: READY
        forked = [child for listener in listeners for child in psutil.Process(listener.pid).children()]
    finally:
        for listener in listeners:
            for process in psutil.Process(listener.pid).children():
                process.kill()
        for process in (*listeners, other):
            process.kill()
            process.wait()
    psutil.wait_procs(forked, timeout=30)
    assert workers.live_workers(os.getpid()) == 0  # gone
    assert workers.live_workers(listeners[0].pid) == 0  # a process that no longer exists: none
