"""serve's watch on the model's workers, through MMS's management API on its unix socket.

MMS answers /ping with HTTP 200 (and `{"status": "Unhealthy"}`) when no worker is alive: after workers die
(a request past the timeout, out of memory, a CUDA fault) and cannot be restarted, SageMaker would keep
sending traffic to an instance that can only fail. `GET /models/<name>` lists the workers and their
status; serve polls it and gives up when none has been READY for a set time (serve.py says what then).
MMS's status alone is not the truth either: a worker whose process was killed with its per-model listener
(which MMS does not restart) stays READY there while the frontend retries it for ever, so a worker counts
only while a worker process is alive below the frontend as well.
"""
import http.client
import json
import socket

import psutil

READY = "READY"  # MMS's status of a worker that has loaded the model and takes requests


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (MMS's management address `unix:/path`)."""

    def __init__(self, path, timeout):
        super().__init__(
            "localhost",  # pragma: no mutate - the host name is unused on a unix socket
            timeout=timeout)
        self.socket_path = str(path)

    def connect(self):
        # AF_UNIX == SOCK_STREAM == 1 on Linux, and SOCK_STREAM is the default: its mutants are equivalent
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # pragma: no mutate - equivalent (above)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def ready_workers(socket_path, model_name, timeout=5.0):  # pragma: no mutate - any default of seconds
    """How many of the model's workers are READY; 0 when the management API does not answer (a frontend
    that cannot answer there cannot answer requests either)."""
    connection = UnixHTTPConnection(socket_path, timeout)
    try:
        connection.request("GET", f"/models/{model_name}")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return 0
        description = json.loads(body)
    except (OSError, http.client.HTTPException, ValueError):
        return 0
    finally:
        connection.close()
    descriptions = description if isinstance(description, list) else [description]  # MMS versions differ
    return sum(1 for model in descriptions if isinstance(model, dict)
               for worker in model.get("workers") or [] if isinstance(worker, dict) and worker.get("status") == READY)


def live_workers(root_pid):
    """The worker processes alive below MMS's process `root_pid`: Python processes running MMS's
    model_service_worker.py that another one (the per-model listener) forked; zombies do not count."""
    def is_mms_python(process):
        try:
            return (process.status() != psutil.STATUS_ZOMBIE
                    and any(part.endswith("model_service_worker.py") for part in process.cmdline()))
        except psutil.Error:  # a process gone between listing and reading it (a race no test can time)
            return False  # pragma: no mutate

    try:
        descendants = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return 0
    count = 0
    for process in descendants:
        try:
            count += is_mms_python(process) and is_mms_python(process.parent())
        except psutil.Error:
            pass
    return count


def ready_count(socket_path, model_name, root_pid):
    """Workers that MMS calls READY and that are alive, as far as both tell (the smaller count)."""
    return min(ready_workers(socket_path, model_name), live_workers(root_pid))


class WorkerWatch:
    """Healthy while a worker was READY within the last `limit` seconds; the first one may take
    `startup` seconds (MMS's own allowance for loading the model) to come up."""

    def __init__(self, limit, startup, now):
        self.limit = limit
        self.deadline = now + max(limit, startup)

    def update(self, ready, now):
        """Record one poll (`ready` workers at `now`); False once the deadline has passed without one."""
        if ready:
            self.deadline = now + self.limit
        return now < self.deadline
