"""The SageMaker inference functions: model_fn, input_fn, predict_fn, output_fn.

input_fn parses a request (raw picture bytes, or a JSON batch of base64 pictures; at most the batch
limit model_fn derived from a timed forward pass) and checks each picture's header (allowed format,
declared size, what its container repeats); predict_fn checks the request's pixel budget, then decodes the pictures one at a time straight into model-size tensors and runs them through the
network in batches; output_fn writes the top-k labels as JSON. Every client mistake raises an
`InferenceError` carrying its HTTP status and a short message; the toolkit turns it into the response
(see transformer.py).

A worker serving with OpenVINO from serve's export (engine.py) imports neither torch nor torchvision: the
pictures become NumPy arrays (preprocessing.EvalPixels), the engine returns NumPy logits. Torch is imported
only where torch serves (a GPU, IMAGE_CLASSIFIER_ENGINE=torch, or a worker loaded outside serve).
"""
import base64
import binascii
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np
from PIL import Image
from sagemaker_inference.errors import BaseInferenceToolkitError

from .. import contract
from ..cuda_check import require_usable_gpu
from ..images import DECODE_ERRORS, ImageTooLargeError, charged_pixels, eval_resize, open_rgb, read_header
from ..model import fingerprint, load_artifact, openvino_model, read_config
from ..preprocessing import EvalPixels
from . import core_share, engine, settings

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ errors
class InferenceError(BaseInferenceToolkitError):
    """A request the server will not answer; `status_code` and `message` go back to the client."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message):
        super().__init__(self.status.value, message, self.status.phrase)


class BadRequest(InferenceError):
    status = HTTPStatus.BAD_REQUEST


class PayloadTooLarge(InferenceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedContentType(InferenceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class NotAcceptable(InferenceError):
    status = HTTPStatus.NOT_ACCEPTABLE


# --------------------------------------------------------------------------------- request headers
def media_type(header):
    """`Image/JPEG; charset=x` -> `image/jpeg`; None stays None."""
    return header.partition(";")[0].strip().lower() if header else None


def check_content_type(content_type):
    kind = media_type(content_type)
    if kind not in settings.ACCEPTED_CONTENT_TYPES:
        raise UnsupportedContentType(
            f"Content type {content_type or '(none)'} is not supported: send one picture as "
            f"{', '.join(settings.RAW_IMAGE_TYPES)}, or a batch as {settings.JSON} "
            '{"instances": [{"b64": "..."}]}.')
    return kind


def check_accept(accept):
    """The response is JSON; refuse an Accept header that rules JSON out."""
    if not accept:
        return
    wanted = {media_type(part) for part in accept.split(",")}
    if not wanted & set(settings.ACCEPTABLE_RESPONSE_TYPES):
        raise NotAcceptable(f"Accept {accept} is not supported: responses are {settings.JSON}.")


def header(context, name):
    """A request header by case-insensitive name (MMS keeps the client's spelling), or None."""
    if context is None or not getattr(context, "request_processor", None):
        return None
    for key, value in context.get_all_request_header(0).items():
        if key.lower() == name.lower():
            return value
    return None


def parse_top_k(custom_attributes, default=contract.DEFAULT_TOP_K):
    """`top_k=3` among SageMaker custom attributes (`a=b,top_k=3` or `;`-separated)."""
    if not custom_attributes:
        return default
    for part in custom_attributes.replace(";", ",").split(","):
        key, _, value = part.partition("=")
        if key.strip().lower() in ("top_k", "top-k"):
            try:
                top_k = int(value.strip())
            except ValueError:
                raise BadRequest(f"top_k must be a whole number, got {value.strip()!r}.") from None
            if top_k < 1:
                raise BadRequest(f"top_k must be at least 1, got {top_k}.")
            return top_k
    return default


# ------------------------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    network: object  # eager torch module, the engine's reference (None in a worker that never imports torch)
    forward: object  # normalised input batch, a (N, 3, H, W) float32 array -> logits array (engine.Engine)
    classes: list
    transform: object  # RGB PIL image -> normalised (3, H, W) float32 array (preprocessing.EvalPixels)
    device: object  # torch.device where torch serves; "cpu" in a worker that never imports torch
    decode_side: int  # pictures are decoded (drafted, reduced) no smaller than this short side
    settings: settings.ServingSettings
    engine: str  # the engine serving (engine.py), named in every response's ENGINE_HEADER
    max_batch: int = settings.DEFAULT_MAX_BATCH  # pictures per request (batch_limit)
    core_share: object = None  # core_share.CoreShare when the workers share the CPU cores
    narrow_forward: object = None  # `forward` on settings.narrow_threads, while other workers are busy


def seconds_per_picture(forward, example):
    """The seconds one forward pass of one picture takes (the faster of two: the first may include
    set-up). One picture at a time is the slow case: batches of forward_batch take less per picture. The
    engine's forward returns its logits on the CPU, so the time includes a GPU's work."""
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        forward(example)
        timings.append(time.perf_counter() - started)
    return min(timings)


def batch_limit(served, per_picture):
    """(pictures per request, why): the setting, or as many as take at most batch_seconds."""
    if served.max_batch is not None:
        return served.max_batch, f"{settings.MAX_BATCH_ENV}={served.max_batch}"
    fitting = int(served.batch_seconds // per_picture) if per_picture > 0 else settings.DEFAULT_MAX_BATCH
    limit = max(1, min(settings.DEFAULT_MAX_BATCH, fitting))
    why = (f"a forward pass takes {per_picture * 1000:.0f} ms per picture here, {limit} take "
           f"{limit * per_picture:.1f} s of the {served.batch_seconds} s allowed ({settings.BATCH_SECONDS_ENV}; "
           f"SageMaker's invocation limit is {settings.INVOCATION_SECONDS} s), at most {settings.DEFAULT_MAX_BATCH}")
    if per_picture > served.batch_seconds:
        log.warning("One picture takes %.1f s, more than %s=%d: requests may time out", per_picture,
                    settings.BATCH_SECONDS_ENV, served.batch_seconds)
    return limit, why


def model_fn(model_dir, context=None):
    """Load the model and its inference engine (engine.py): OpenVINO from serve's export in a worker that
    never imports torch; else the artifact (weights_only) in eval mode, on this worker's GPU when there is
    one, with its engine checked against eager at load (torch when it is not available or differs)."""
    # On a GPU host, a worker that cannot use the GPU (a device file its user may not open, a driver fault) fails
    # its load here, with the reason, instead of serving 10-50 times slower from the CPU.
    require_usable_gpu(exercise=True, who=f"model server worker, uid {os.getuid()}")
    lean = load_exported(model_dir)
    if lean is not None:
        config, served, served_by, device, network = lean
    else:
        config, served, served_by, device, network = load_with_torch(model_dir, context)
    log.info("Loaded %s (%d classes, %d px) on %s, %d thread(s), engine: %s, optimised: %s", config.arch,
             config.num_classes, config.image_size, device, served.torch_threads, served_by.name, served.optimize)
    shared = core_share.from_environment(served, os.environ.get(settings.CORE_SHARE_DIR_ENV))
    narrow = served_by.at_threads(served.narrow_threads) if shared else served_by.forward
    if shared and network is not None:  # the rest of a request's torch work on the narrow share too
        import torch

        torch.set_num_threads(served.narrow_threads)
    # Timed on the narrow forward: a request must fit SageMaker's limit while the other workers are busy too.
    max_batch, why = batch_limit(served, seconds_per_picture(
        narrow, np.zeros((1, 3, config.image_size, config.image_size), np.float32)))
    log.info("Batch limit: %d picture(s) per request (%s)", max_batch, why)
    return LoadedModel(network, served_by.forward, list(config.classes), EvalPixels(config.image_size, config.mean,
                                                                                    config.std), device,
                       eval_resize(config.image_size), served, served_by.name, max_batch, shared, narrow)


def load_exported(model_dir):
    """(config, settings, Engine, "cpu", None) from serve's export when serve chose an OpenVINO engine and the
    engine passes its check there (int8 falls back to fp32), without importing torch; else None."""
    exported = os.environ.get(settings.ENGINE_EXPORT_ENV)
    ready = engine.exported_engines(exported)
    requested = os.environ.get(settings.ENGINE_ENV)
    if requested not in ready:
        return None
    served = settings.load(gpus=0)  # serve exports OpenVINO engines on CPU hosts only
    weights = fingerprint(model_dir)
    for name in ready[ready.index(requested):]:
        served_by = engine.load_export(name, exported, served.torch_threads, served.engine_tolerance, weights)
        if served_by is not None:
            return read_config(model_dir), served, served_by, "cpu", None
    return None


def load_with_torch(model_dir, context):
    """(config, settings, Engine, device, eager network): the artifact loaded with torch and its engine."""
    import torch

    served = settings.load(gpus=torch.cuda.device_count())
    torch.set_num_threads(served.torch_threads)
    gpu_id = context.system_properties.get("gpu_id") if context is not None else None
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(gpu_id or 0) % torch.cuda.device_count()}")
    else:
        device = torch.device("cpu")
    network, config = load_artifact(model_dir, device)
    int8_model = openvino_model(model_dir, int8=True) if config.int8_accepted else None
    served_by, network = engine.load(served.engine, network, config.image_size, device, served.torch_threads,
                                     served.engine_tolerance, served.optimize,
                                     exported=os.environ.get(settings.ENGINE_EXPORT_ENV), int8_model=int8_model)
    return config, served, served_by, device, network


# ------------------------------------------------------------------------------------------- input
@dataclass
class EncodedPicture:
    """One picture of a request, checked from its header only (format, declared size), not decoded."""
    data: bytes
    what: str  # how the messages name it: "The body", "instances[3]"
    size: tuple  # (width, height) as declared in its header


@dataclass
class PictureRequest:
    pictures: list  # EncodedPicture
    top_k: int


@contextmanager
def client_errors(what):
    """Pillow's errors for one picture -> 400 (unreadable, not an allowed format) or 413 (too big)."""
    try:
        yield
    except ImageTooLargeError as error:
        raise PayloadTooLarge(f"{what} is too large: {error}.") from None
    except Image.UnidentifiedImageError:
        raise BadRequest(f"{what} is not a picture in a supported format "
                         f"({', '.join(settings.PICTURE_FORMATS)}).") from None
    except DECODE_ERRORS as error:
        reason = str(error).split("\n")[0][:200]
        raise BadRequest(f"{what} is not a readable picture: {reason}.") from None


def check_picture(data, what="The body", max_pixels=settings.DEFAULT_MAX_PIXELS):
    """Bytes -> EncodedPicture after reading the header: 400 if empty or not an allowed format, 413 if it
    declares more pixels than the cap, or its container repeats more than picture_containers.py allows (a
    JPEG's scans or segments, a PNG's chunks...). No pixel is decoded here."""
    if not data:
        raise BadRequest(f"{what} is empty: send the bytes of a picture.")
    with client_errors(what):
        header = read_header(data, max_pixels)
    return EncodedPicture(bytes(data), what, header.size)


def load_json(body):
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode()  # UTF-8, whatever the locale
        except UnicodeDecodeError:
            raise BadRequest("The JSON body is not UTF-8 text.") from None
    if not body or not body.strip():
        raise BadRequest("The body is empty: send {\"instances\": [{\"b64\": \"...\"}]}.")
    try:
        return json.loads(body)
    except ValueError as error:  # JSONDecodeError, or a number of more than 4,300 digits
        raise BadRequest(f"The body is not valid JSON: {error}.") from None  # json's reasons are one short line
    except RecursionError:
        raise BadRequest("The JSON body is nested too deeply: send "
                         "{\"instances\": [{\"b64\": \"...\"}]}.") from None


def decode_batch(body, max_batch=settings.DEFAULT_MAX_BATCH):
    """`{"instances": [{"b64": "..."}, ...]}` -> the pictures' bytes."""
    document = load_json(body)
    instances = document.get("instances") if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise BadRequest('The JSON body must be {"instances": [{"b64": "<base64 picture>"}, ...]} '
                         "with at least one instance.")
    if len(instances) > max_batch:
        raise PayloadTooLarge(f"{len(instances)} pictures in one request; at most {max_batch}.")
    pictures = []
    for number, instance in enumerate(instances):
        encoded = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(encoded, str):
            raise BadRequest(f'instances[{number}] must be an object {{"b64": "<base64 picture>"}}, '
                             f"got {type(encoded if isinstance(instance, dict) else instance).__name__}.")
        try:
            pictures.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"instances[{number}].b64 is not valid base64.") from None
    return pictures


def input_fn(body, content_type, context=None, max_batch=None):
    """Request body -> PictureRequest. Raw picture types carry one picture, JSON a batch of at most
    `max_batch` (the loaded model's limit; the transformer passes it), else the setting or its default."""
    served = settings.load()
    max_batch = max_batch or served.max_batch or settings.DEFAULT_MAX_BATCH
    kind = check_content_type(content_type)
    top_k = parse_top_k(header(context, contract.CUSTOM_ATTRIBUTES_HEADER), served.top_k)
    if kind == settings.JSON:
        pictures = [check_picture(data, f"instances[{n}]", served.max_pixels)
                    for n, data in enumerate(decode_batch(body, max_batch))]
    else:
        pictures = [check_picture(body, max_pixels=served.max_pixels)]
    return PictureRequest(pictures, top_k)


# ----------------------------------------------------------------------------------------- predict
@dataclass
class Prediction:
    probabilities: np.ndarray  # (pictures, classes) float32
    classes: list
    top_k: int


def check_pixel_budget(pictures, model):
    """413 before anything is decoded when a picture, resized up to the model's input, would pass the
    per-picture cap, or the pictures together the request's budget (images.charged_pixels)."""
    budget, cap, total = model.settings.pixel_budget, model.settings.max_pixels, 0
    for picture in pictures:
        charged = charged_pixels(picture.size, model.decode_side)
        if charged > cap:
            width, height = picture.size
            raise PayloadTooLarge(f"{picture.what} is too large: {width}x{height} pixels are resized to "
                                  f"{charged:,} pixels (a short side of {model.decode_side}), more than {cap:,}.")
        total += charged
    if total > budget:
        raise PayloadTooLarge(f"The request's pictures decode to {total:,} pixels, more than the budget of "
                              f"{budget:,} pixels per request ({settings.PIXEL_BUDGET_ENV}): send fewer or "
                              f"smaller pictures.")


def to_tensor(picture, model):
    """Decode one picture (no smaller than the model needs) straight into its model-size array; the
    decoded picture is dropped at once, so a request never holds more than one at full size."""
    with client_errors(picture.what):
        image = open_rgb(picture.data, model.settings.max_pixels, model.decode_side)
    return model.transform(image)


def prepare(request, model):
    """The request's pictures as one normalised batch (the pixel budget checked before any decoding)."""
    check_pixel_budget(request.pictures, model)
    return np.stack([to_tensor(picture, model) for picture in request.pictures])


@contextmanager
def cores(model):
    """Yields the forward pass a request may use: on every thread while no other worker is busy, on this
    worker's share of the cores while one is (core_share.py). Hold it for the whole request: decoding keeps
    a core busy too."""
    if model.core_share is None:
        yield model.forward
        return
    with model.core_share.claim() as alone:
        yield model.forward if alone else model.narrow_forward


def forward(inputs, model, run=None):
    """Class probabilities (float32 array) for a batch of any size, in forward passes of at most forward_batch
    pictures, through `run` (a forward from `cores`; the model's own forward when not given)."""
    run = run or model.forward
    batch_size = model.settings.forward_batch
    outputs = [softmax(run(inputs[start:start + batch_size])) for start in range(0, len(inputs), batch_size)]
    return np.concatenate(outputs)


def softmax(logits):
    logits = np.asarray(logits, dtype=np.float32)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def predict_fn(request, model):
    """Class probabilities for every picture of one request."""
    with cores(model) as run:
        return Prediction(forward(prepare(request, model), model, run), model.classes, request.top_k)


# ------------------------------------------------------------------------------------------ output
def top_labels(probabilities, classes, top_k):
    """The `top_k` most probable classes of one picture's probabilities, most probable first (ties: the
    lower index first)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    indices = np.argsort(-probabilities, stable=True)[:min(top_k, len(classes))]
    return [{"label": classes[i], "index": int(i), "probability": round(float(probabilities[i]), 6)}
            for i in indices]


def output_fn(prediction, accept, context=None):
    """JSON: {"predictions": [[{"label", "index", "probability"}, ...top_k], ...one per picture]}."""
    check_accept(accept)
    body = {"predictions": [top_labels(row, prediction.classes, prediction.top_k)
                            for row in prediction.probabilities]}
    return json.dumps(body), settings.JSON


def error_body(message, status):
    """The JSON body of an error response: short, never a traceback."""
    return json.dumps({"error": HTTPStatus(status).phrase, "message": message})
