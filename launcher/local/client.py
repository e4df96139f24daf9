"""A local endpoint's client, over HTTP only (whichever backend serves it): invoke, wait for the first
prediction, the content type of a picture file, and the printed result table."""
import io
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from image_classifier.contract import CUSTOM_ATTRIBUTES_HEADER, DEFAULT_TOP_K, SERVING_PORT
from image_classifier.serving.settings import ENGINE_HEADER

from .. import LauncherError
from ..terminal import printable

LOCAL_HOST = "127.0.0.1"  # a local endpoint listens on loopback only
READY_TIMEOUT_SECONDS = 600  # a server's first start: torch import + model load in serve and every worker
REQUEST_TIMEOUT_SECONDS = 120
PROBE_TIMEOUT_SECONDS = 60
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
RAW_PICTURE_TYPE = "application/x-image"  # any other picture format


def invocations_url(port):
    return f"http://{LOCAL_HOST}:{port}/invocations"


def port_in_use(port):
    with socket.socket() as probe:
        return probe.connect_ex((LOCAL_HOST, port)) == 0


def invoke(port, body, content_type, top_k=None, timeout=REQUEST_TIMEOUT_SECONDS, headers_out=None):
    """POST to the local endpoint; (status, body bytes) for any HTTP answer (its headers into `headers_out`)."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if top_k is not None:
        headers[CUSTOM_ATTRIBUTES_HEADER] = f"top_k={top_k}"
    request = urllib.request.Request(invocations_url(port), data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if headers_out is not None:
                headers_out.update(response.headers.items())
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def content_type_of(path):
    return CONTENT_TYPES.get(Path(path).suffix.lower()) or RAW_PICTURE_TYPE


def probe_picture():
    """A small PNG to check that the model answers (not only /ping, which MMS answers before loading)."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


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
            status, _ = invoke(port, picture, "image/png", timeout=PROBE_TIMEOUT_SECONDS)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise LauncherError(f"The model server did not answer within {timeout} s; {where_to_look}.")


def predict(images, port=SERVING_PORT, top_k=DEFAULT_TOP_K, as_json=False):
    """Each picture to the local endpoint, its top-k labels printed, then the engine that answered (the
    server's ENGINE_HEADER: openvino-int8, openvino or torch); LauncherError if any was refused."""
    failures, answered = [], {}
    for path in map(Path, images):
        if not path.is_file():
            raise LauncherError(f"{path}: no such file.")
        try:
            status, body = invoke(port, path.read_bytes(), content_type_of(path), top_k, headers_out=answered)
        except (urllib.error.URLError, ConnectionError) as error:
            raise LauncherError(f"No model server answers on port {port} ({getattr(error, 'reason', error)}): "
                                f"start one with `python launch.py deploy --local --port {port}`.") from None
        if as_json:
            print(printable(body.decode("utf-8", errors="replace")))
        elif status == 200:
            print(format_table(path, json.loads(body)["predictions"][0]))
        else:
            print(f"{printable(path)}: error {status}: {printable(error_message(body))}")
        if status != 200:
            failures.append(path)
    engine = {key.lower(): value for key, value in answered.items()}.get(ENGINE_HEADER.lower())
    if engine and not as_json:
        print(f"(answered by the {printable(engine)} engine)")
    if failures:
        raise LauncherError(f"{len(failures)} of {len(images)} picture(s) were refused.")


def error_message(body):
    try:
        return json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace")[:300]


def format_table(path, labels):
    """The picture's name and its top-k labels, for the terminal (control characters out: the labels come
    from the model's class folders, the name from the user)."""
    shown = [printable(item["label"]) for item in labels]
    width = max([len(label) for label in shown] + [5])
    rows = [printable(path), f"  {'label':<{width}}  probability"]
    rows += [f"  {label:<{width}}  {item['probability']:>10.2%}" for label, item in zip(shown, labels)]
    return "\n".join(rows)
