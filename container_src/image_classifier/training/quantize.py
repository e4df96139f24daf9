"""The int8 model, made where the data is: NNCF post-training quantization at the end of training.

The trained network is converted to OpenVINO (fp32, saved in the artifact so that serve need not convert
it), quantized with NNCF (OpenVINO's own tool) calibrated on up to CALIBRATION_PICTURES training pictures
through the evaluation transform, and both forms are measured on the validation split. The int8 model is
kept (`openvino/model-int8.xml`) only when its top-1 is at most MAX_DROP_POINTS below fp32's, or one
picture on a set too small for that to be a whole picture; model.json, the job's metric lines and its log
record both accuracies, the decision and the reason. A set with fewer than MIN_CALIBRATION_PICTURES
training pictures is too small to calibrate: the job says so and skips it (without importing NNCF, which
keeps the many tiny test jobs fast). The fp32 weights (model.pth) always stay: GPUs serve them, and so does
every engine that cannot use the int8 model.
"""
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import constants
from ..images import eval_resize
from ..metrics import format_metrics
from ..model import load_artifact, record_quantization
from .data import PictureDataset

log = logging.getLogger(__name__)

CALIBRATION_PICTURES = 300  # NNCF's default subset size: "a few hundred"
MIN_CALIBRATION_PICTURES = 100  # fewer: too small to calibrate (ranges from a handful of pictures are noise)
MAX_DROP_POINTS = 0.5  # top-1 points on the validation split the int8 model may lose against fp32
VALID_BATCH = 16


def import_openvino():
    # No usage reports to Intel from a training job (as serving: engine.import_openvino); NNCF reports through
    # the same package.
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def allowed_drop(valid_pictures):
    """Pictures of the validation split the int8 model may get wrong beyond fp32's: MAX_DROP_POINTS of them,
    at least one (on a tiny set, half a point is less than a picture)."""
    return max(valid_pictures * MAX_DROP_POINTS / 100, 1)


def decide(fp32_correct, int8_correct, valid_pictures):
    """(decision, reason) of the accuracy gate."""
    lost, allowed = fp32_correct - int8_correct, allowed_drop(valid_pictures)
    drop_points = 100 * lost / valid_pictures
    verdict = constants.INT8_ACCEPTED if lost <= allowed else constants.INT8_REJECTED
    return verdict, (f"int8 top-1 {'within' if verdict == constants.INT8_ACCEPTED else 'more than'} the allowed drop "
                     f"of fp32's on {valid_pictures} validation pictures: {drop_points:+.2f} points lost "
                     f"({lost} pictures; at most {MAX_DROP_POINTS} points or one picture)")


def correct_count(compiled, batches):
    """Top-1 hits of an OpenVINO compiled model over (pictures array, labels array) batches."""
    return sum(int((compiled(pictures)[0].argmax(1) == labels).sum()) for pictures, labels in batches)


def quantize_model(model_dir, network, image_size, calibration, validation):
    """Convert `network` (eager, CPU) to OpenVINO, quantize it on `calibration` (arrays of one picture each),
    measure both on `validation` ((pictures, labels) array batches) and keep int8 in `model_dir` when the gate
    lets it through. Returns the record (also written into model.json)."""
    openvino = import_openvino()
    import nncf  # here: seconds of imports that only a job that quantizes pays

    started = time.monotonic()
    folder = Path(model_dir) / constants.OPENVINO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        fp32 = openvino.convert_model(network.cpu().eval(), example_input=torch.zeros(1, 3, image_size, image_size),
                                      input=[(-1, 3, image_size, image_size)])
    # Full fp32 weights: the default fp16 compression would change the answers.
    openvino.save_model(fp32, str(folder / constants.OPENVINO_FP32_MODEL), compress_to_fp16=False)
    int8 = nncf.quantize(fp32, nncf.Dataset(calibration), subset_size=len(calibration))
    core = openvino.Core()
    valid_pictures = sum(len(labels) for _, labels in validation)
    fp32_correct = correct_count(core.compile_model(fp32, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), validation)
    int8_correct = correct_count(core.compile_model(int8, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), validation)
    decision, reason = decide(fp32_correct, int8_correct, valid_pictures)
    if decision == constants.INT8_ACCEPTED:
        openvino.save_model(int8, str(folder / constants.OPENVINO_INT8_MODEL), compress_to_fp16=False)
    record = {"decision": decision, "reason": reason, "fp32_valid_acc": fp32_correct / valid_pictures,
              "int8_valid_acc": int8_correct / valid_pictures, "valid_pictures": valid_pictures,
              "calibration_pictures": len(calibration), "seconds": round(time.monotonic() - started, 1),
              "nncf": nncf.__version__, "openvino": openvino.__version__}
    record_quantization(model_dir, record)
    return record


def skipped(model_dir, reason):
    record = {"decision": constants.INT8_SKIPPED, "reason": reason}
    record_quantization(model_dir, record)
    return record


def pictures(samples, transform, image_size, seed):
    """(array of one picture, label) for each readable sample, through `transform` (torchvision's)."""
    dataset = PictureDataset(samples, transform, seed, min_side=eval_resize(image_size))
    items = (dataset[index] for index in range(len(dataset)))
    return [(image.unsqueeze(0).numpy(), label) for item in items if not isinstance(item, str)
            for image, label in [item]]


def quantize_job(job, model_dir):
    """The end-of-training step of a job (rank 0, after the artifact is saved): quantize, gate, record, and
    print the metric lines. Never fails the job: the fp32 model is saved already, and int8 is an extra."""
    hp, samples = job.hp, job.splits.samples
    if not hp.quantize:
        record = skipped(model_dir, "quantize=false")
    elif len(samples.get("train", ())) < MIN_CALIBRATION_PICTURES or not samples.get("valid"):
        record = skipped(model_dir, f"the set is too small to calibrate an int8 model: {len(samples.get('train', ()))} "
                                    f"training pictures (at least {MIN_CALIBRATION_PICTURES}) and "
                                    f"{len(samples.get('valid', ()))} validation pictures")
    else:
        try:
            chosen = random.Random(hp.seed).sample(samples["train"], min(CALIBRATION_PICTURES, len(samples["train"])))
            calibration = [image for image, _ in pictures(chosen, job.eval_transform, hp.image_size, hp.seed)]
            valid = pictures(samples["valid"], job.eval_transform, hp.image_size, hp.seed)
            validation = [(np.concatenate([image for image, _ in valid[start:start + VALID_BATCH]]),
                           np.array([label for _, label in valid[start:start + VALID_BATCH]]))
                          for start in range(0, len(valid), VALID_BATCH)]
            network, _ = load_artifact(model_dir)  # the saved weights, on the CPU, without the job's hooks
            record = quantize_model(model_dir, network, hp.image_size, calibration, validation)
        except Exception as error:  # noqa: BLE001 - see above
            log.exception("The int8 quantization failed; the artifact keeps its fp32 model only")
            record = skipped(model_dir, f"quantization failed: {type(error).__name__}: {str(error)[:200]}")
    report(record)
    return record


def report(record):
    """The log line and the metric lines (int8_kept: 1 accepted, 0 rejected, -1 skipped)."""
    decision = record["decision"]
    if decision == constants.INT8_SKIPPED:
        log.info("No int8 model: %s", record["reason"])
    else:
        log.log(logging.INFO if decision == constants.INT8_ACCEPTED else logging.WARNING,
                "int8 model %s: valid top-1 %.4f (fp32 %.4f); %s; calibrated on %d pictures in %.1f s", decision.upper(),
                record["int8_valid_acc"], record["fp32_valid_acc"], record["reason"], record["calibration_pictures"],
                record["seconds"])
    line = {"int8_kept": {constants.INT8_ACCEPTED: 1, constants.INT8_REJECTED: 0}.get(decision, -1)}
    if decision != constants.INT8_SKIPPED:
        line.update(fp32_valid_acc=record["fp32_valid_acc"], int8_valid_acc=record["int8_valid_acc"])
    print(format_metrics(**line), flush=True)
