"""Serve a model on this machine the way a SageMaker endpoint serves it, query it, stop it.

`deploy` unpacks `model.tar.gz` into an `/opt/ml`-shaped folder (`local_jobs/serving/port-<N>/`), runs
the container's `serve` entry point over it as a plain process (SAGEMAKER_BASE_DIR points there) on
127.0.0.1, and waits until a prediction answers. A detached server's pid is recorded in that folder
so `delete` can stop it with all its model-server processes. `predict` talks to it over HTTP only.
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from image_classifier.contract import (BASE_DIR_ENV, BIND_ADDRESS_ENV, CUSTOM_ATTRIBUTES_HEADER, DEFAULT_TOP_K, PORT_ENV,
                                       SERVING_PORT, MLPaths)
from image_classifier.serving.settings import MAX_PORT

from . import LOCAL_JOBS_DIR, LauncherError
from .local_training import newest_model

LOCAL_HOST = "127.0.0.1"  # a local endpoint listens on loopback only
SERVING_DIR = LOCAL_JOBS_DIR / "serving"
SERVER_RECORD = "server.json"
SERVER_LOG = "serve.log"
READY_TIMEOUT_SECONDS = 600  # first start: torch import + model load in serve and in every worker
STOP_TIMEOUT_SECONDS = 30
REQUEST_TIMEOUT_SECONDS = 120
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
RAW_PICTURE_TYPE = "application/x-image"  # any other picture format


def server_dir(port):
    return SERVING_DIR / f"port-{port}"


def invocations_url(port):
    return f"http://{LOCAL_HOST}:{port}/invocations"


# ------------------------------------------------------------------------------------------ deploy
def deploy(model=None, port=SERVING_PORT, mode="auto", detach=False):
    from .docker_image import local_mode

    mode = local_mode(mode)
    model = Path(model) if model else newest_model(LOCAL_JOBS_DIR)
    if model is None:
        raise LauncherError(f"No trained model in {LOCAL_JOBS_DIR}: run `python launch.py train --local` "
                            f"first, or give one with --model PATH (model.tar.gz or a model folder).")
    highest = MAX_PORT if mode == "process" else 65535  # in the image, MMS itself listens on 8080
    if not 1 <= port <= highest:
        raise LauncherError(f"--port {port}: the model server (MMS) accepts ports 1 to {highest} only.")
    running = read_record(port)
    if running:
        raise LauncherError(f"A local model server already runs on port {port} (pid {running['pid']}): "
                            f"stop it with `python launch.py delete --local --port {port}`.")
    if port_in_use(port):
        raise LauncherError(f"Port {port} is already in use: pick another with --port.")
    base_dir = server_dir(port)
    install_model(model, MLPaths(base_dir).model)
    if mode == "docker":
        from . import docker_runner  # imports this module: not at the top

        docker_runner.serve(MLPaths(base_dir).model, port, detach)  # `docker run -p PORT:8080 IMAGE serve`
        return
    process = start_server(base_dir, port)
    print(f"Starting the model server for {model} on port {port} (log: {base_dir / SERVER_LOG}) ...")
    try:
        wait_until_ready(process, port, base_dir / SERVER_LOG)
    except BaseException:
        stop_process(process.pid)
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
        stopped = stop_process(process.pid)
        remove_record(port)
        print(f"\nModel server stopped ({stopped} processes).")


def install_model(model, model_dir):
    """Put the artifact in `model_dir` as SageMaker does: model.tar.gz unpacked, or a folder's files."""
    if not model.exists():
        raise LauncherError(f"Model {model} does not exist.")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    if model.is_dir():
        shutil.copytree(model, model_dir, dirs_exist_ok=True)
    elif tarfile.is_tarfile(model):
        with tarfile.open(model) as tar:
            tar.extractall(model_dir, filter="data")  # refuses absolute paths, .. and devices
    else:
        raise LauncherError(f"Model {model} is neither a model folder nor a model.tar.gz.")


def serve_environment(base_dir, port):
    env = dict(os.environ)
    env.update({
        BASE_DIR_ENV: str(base_dir),
        PORT_ENV: str(port),
        BIND_ADDRESS_ENV: LOCAL_HOST,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def start_server(base_dir, port):
    """`serve` from this Python's environment, in its own session, output to serve.log; pid recorded."""
    serve = Path(sys.executable).parent / "serve"
    if not serve.exists():
        raise LauncherError(f"{serve} not found: run `make setup` (it installs the container package).")
    with open(base_dir / SERVER_LOG, "wb") as log:
        process = subprocess.Popen([str(serve)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=serve_environment(base_dir, port), cwd=base_dir, start_new_session=True)
    started = psutil.Process(process.pid).create_time()
    (base_dir / SERVER_RECORD).write_text(json.dumps({"pid": process.pid, "port": port, "created": started}))
    return process


def probe_picture():
    """A small PNG to check that the model answers (not only /ping, which MMS answers before loading)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_until_ready(process, port, log_file, timeout=READY_TIMEOUT_SECONDS):
    def exited():
        if process.poll() is not None:
            return f"The model server exited (code {process.returncode}) before it answered:\n{tail(log_file)}"
        return None

    wait_for_prediction(port, timeout, exited, f"see {log_file}")


def wait_for_prediction(port, timeout, exited, where_to_look):
    """Until a real prediction answers 200 (MMS answers /ping before the model is loaded). `exited()`
    says why the server is gone, or None while it runs."""
    picture = probe_picture()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = exited()
        if gone:
            raise LauncherError(gone)
        try:
            status, _ = invoke(port, picture, "image/png", timeout=60)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise LauncherError(f"The model server did not answer within {timeout} s; {where_to_look}.")


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


def port_in_use(port):
    import socket

    with socket.socket() as probe:
        return probe.connect_ex((LOCAL_HOST, port)) == 0


# ----------------------------------------------------------------------------------------- predict
def invoke(port, body, content_type, top_k=None, timeout=REQUEST_TIMEOUT_SECONDS):
    """POST to the local endpoint; (status, body bytes) for any HTTP answer."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if top_k is not None:
        headers[CUSTOM_ATTRIBUTES_HEADER] = f"top_k={top_k}"
    request = urllib.request.Request(invocations_url(port), data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def content_type_of(path):
    return CONTENT_TYPES.get(path.suffix.lower()) or RAW_PICTURE_TYPE


def predict(images, port=SERVING_PORT, top_k=DEFAULT_TOP_K, as_json=False):
    failures = []
    for path in map(Path, images):
        if not path.is_file():
            raise LauncherError(f"{path}: no such file.")
        try:
            status, body = invoke(port, path.read_bytes(), content_type_of(path), top_k)
        except (urllib.error.URLError, ConnectionError) as error:
            raise LauncherError(f"No model server answers on port {port} ({getattr(error, 'reason', error)}): "
                                f"start one with `python launch.py deploy --local --port {port}`.") from None
        if as_json:
            print(body.decode("utf-8", errors="replace"))
        elif status == 200:
            print(format_table(path, json.loads(body)["predictions"][0]))
        else:
            print(f"{path}: error {status}: {error_message(body)}")
        if status != 200:
            failures.append(path)
    if failures:
        raise LauncherError(f"{len(failures)} of {len(images)} picture(s) were refused.")


def error_message(body):
    try:
        return json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace")[:300]


def format_table(path, labels):
    width = max([len(item["label"]) for item in labels] + [5])
    rows = [f"{path}", f"  {'label':<{width}}  probability"]
    rows += [f"  {item['label']:<{width}}  {item['probability']:>10.2%}" for item in labels]
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ delete
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


def stop_process(pid, timeout=STOP_TIMEOUT_SECONDS):
    """SIGTERM `serve` (it stops its model server), then kill anything of its tree still alive.
    Returns how many processes were stopped."""
    try:
        root = psutil.Process(pid)
        tree = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    root.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(tree)


def delete(port=SERVING_PORT):
    from . import docker_runner

    if docker_runner.stop(port):
        print(f"Stopped the model server container on port {port}.")
        return
    record = read_record(port)
    if record is None:
        print(f"No local model server is running on port {port}.")
        return
    stopped = stop_process(record["pid"])
    remove_record(port)
    print(f"Stopped the local model server on port {port}: pid {record['pid']} and "
          f"{stopped - 1} model-server process(es).")
