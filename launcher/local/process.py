"""The process backend: the container's entry points (`train`, `serve`) from this Python's environment,
as plain processes over local `/opt/ml` trees (SAGEMAKER_BASE_DIR points there), no image needed.

A server listens on 127.0.0.1; a detached one's pid is recorded in its tree so `stop` finds it, with all
its model-server processes. Several training hosts: each host's name resolves to 127.0.0.1 for these
processes only, in a private mount namespace where a copy of /etc/hosts that maps them is mounted over
/etc/hosts (the machine's file is not touched), and gloo talks over the loopback interface.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from image_classifier.contract import (BASE_DIR_ENV, BIND_ADDRESS_ENV, PORT_ENV, PROGRAM_ENV, STUDIO_LOCAL_MODE_ENV,
                                       TRAINING_MODULE_ENV)
from image_classifier.serving.settings import MAX_PORT

from .. import ENTRY_SHIM, LauncherError
from .client import LOCAL_HOST, READY_TIMEOUT_SECONDS, invocations_url, wait_for_prediction
from .hosts import FRAMEWORK_MODULE, LOOPBACK_INTERFACE, host_names, run_hosts
from .processes import OFF_AWS_ENV, stop_tree, stream
from .trees import server_dir

MODE = "process"
HOST_INTERFACE = LOOPBACK_INTERFACE
HIGHEST_PORT = MAX_PORT
HOSTS_FILE = "etc-hosts"  # the mapped copy of /etc/hosts, in the first host's input/config
SERVER_RECORD = "server.json"
SERVER_LOG = "serve.log"
STOP_TIMEOUT_SECONDS = 30
LOCAL_ENV = {**OFF_AWS_ENV, "PYTHONUNBUFFERED": "1"}


def entry_point(name, installed_by):
    """The console script `name` (`train`, `serve`) of this Python's environment."""
    script = Path(sys.executable).parent / name
    if not script.exists():
        raise LauncherError(f"{script} not found: run `make setup` (it installs {installed_by}).")
    return script


# ---------------------------------------------------------------------------------------- training
def process_environment(job):
    return {**os.environ, **LOCAL_ENV,
            BASE_DIR_ENV: str(job.dir),
            PROGRAM_ENV: ENTRY_SHIM.name,
            STUDIO_LOCAL_MODE_ENV: "true"}  # the toolkit's DNS wait would hang on the host names otherwise


def train(job, echo=True, env=None):
    """The toolkit's `train` over the job's tree, with `env` added; output streams to the terminal and
    job.log_file. Returns the exit code."""
    return stream([str(entry_point("train", "sagemaker-training"))], job.log_file,
                  {**process_environment(job), **(env or {})}, echo)


def host_environment(job):
    return {**process_environment(job),
            TRAINING_MODULE_ENV: FRAMEWORK_MODULE,
            # torchrun of this environment first, as in the image
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "GLOO_SOCKET_IFNAME": LOOPBACK_INTERFACE}


def loopback_command(command, hosts, hosts_file):
    """`command` in a private mount namespace where `hosts` resolve to 127.0.0.1."""
    if shutil.which("unshare") is None:
        raise LauncherError("`unshare` (util-linux) is needed to emulate several hosts on this machine.")
    real = Path("/etc/hosts").read_text() if Path("/etc/hosts").is_file() else ""
    Path(hosts_file).write_text(real.rstrip("\n") + "\n127.0.0.1 " + " ".join(hosts) + "\n")
    user = [] if os.getuid() == 0 else ["--map-root-user"]
    return ["unshare", *user, "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file), *command]


def host_commands(jobs):
    """(command, environment) per host: the toolkit's `train` of this Python's environment."""
    train_script = str(entry_point("train", "sagemaker-training"))
    hosts_file = jobs[0].paths.config / HOSTS_FILE
    command = loopback_command([train_script], host_names(len(jobs)), hosts_file) if len(jobs) > 1 else [train_script]
    return [(command, host_environment(job)) for job in jobs]


def train_hosts(jobs, echo=True):
    """Every host's `train` at once, the host names mapped to loopback. Returns the exit code."""
    return run_hosts(jobs, host_commands(jobs), echo)


# ----------------------------------------------------------------------------------------- serving
def serve_environment(base_dir, port):
    return {**os.environ, **LOCAL_ENV, BASE_DIR_ENV: str(base_dir), PORT_ENV: str(port), BIND_ADDRESS_ENV: LOCAL_HOST}


def start_server(base_dir, port):
    """`serve` from this Python's environment, in its own session, output to serve.log; pid recorded."""
    serve_script = entry_point("serve", "the container package")
    with open(base_dir / SERVER_LOG, "wb") as log:
        process = subprocess.Popen([str(serve_script)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=serve_environment(base_dir, port), cwd=base_dir,
                                   start_new_session=True)
    started = psutil.Process(process.pid).create_time()
    (base_dir / SERVER_RECORD).write_text(json.dumps({"pid": process.pid, "port": port, "created": started}))
    return process


def serve(model_dir, port, detach=False):
    """Serve `model_dir` (the `model` folder of the server's tree, `trees.server_dir(port)`) on
    127.0.0.1:`port`; returns once a prediction answers when `detach`, else follows the log until Ctrl-C."""
    base_dir = server_dir(port)
    process = start_server(base_dir, port)
    print(f"Starting the model server for {model_dir} on port {port} (log: {base_dir / SERVER_LOG}) ...")
    try:
        wait_until_ready(process, port, base_dir / SERVER_LOG)
    except BaseException:
        stop_tree(process.pid)
        remove_record(port)
        raise
    print(f"Model server ready: {invocations_url(port)}\n"
          f"  predict: python launch.py predict --local --port {port} PICTURE...")
    if detach:
        print(f"  stop:    python launch.py delete --local --port {port}")
        return
    print("Serving in the foreground; Ctrl-C stops it.")
    try:
        follow_log(process, base_dir / SERVER_LOG)
        raise LauncherError(f"The model server exited (code {process.returncode}); see {base_dir / SERVER_LOG}")
    except KeyboardInterrupt:
        stopped = stop_tree(process.pid)
        remove_record(port)
        print(f"\nModel server stopped ({stopped} processes).")


def wait_until_ready(process, port, log_file, timeout=READY_TIMEOUT_SECONDS):
    def exited():
        if process.poll() is not None:
            return f"The model server exited (code {process.returncode}) before it answered:\n{tail(log_file)}"
        return None

    wait_for_prediction(port, timeout, exited, f"see {log_file}")


def follow_log(process, log_file):
    """Copy the server's log to the terminal until it exits."""
    with open(log_file, "rb") as log:
        log.seek(0, os.SEEK_END)
        while process.poll() is None:
            chunk = log.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(0.2)


def tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_record(port):
    """The recorded server on `port` if that process still runs (and is the same process), else None."""
    record_file = server_dir(port) / SERVER_RECORD
    try:
        record = json.loads(record_file.read_text())
        process = psutil.Process(record["pid"])
        if abs(process.create_time() - record["created"]) < 1 and process.status() != psutil.STATUS_ZOMBIE:
            return record
    except (OSError, ValueError, KeyError, psutil.Error):
        pass
    record_file.unlink(missing_ok=True)
    return None


def remove_record(port):
    (server_dir(port) / SERVER_RECORD).unlink(missing_ok=True)


def stop(port):
    """Stop the recorded server on `port` (SIGTERM to `serve`, which stops its model server; then whatever of
    its tree is left). Returns what was stopped, in words, or None when none runs."""
    record = read_record(port)
    if record is None:
        return None
    stopped = stop_tree(record["pid"], timeout=STOP_TIMEOUT_SECONDS)
    remove_record(port)
    return (f"the local model server on port {port}: pid {record['pid']} and "
            f"{max(stopped - 1, 0)} model-server process(es)")
