"""The int8 model from training to serving: a job on enough pictures makes one, the accuracy gate keeps it or
rejects it (recorded in model.json and the metric lines), serving picks it (or fp32 when it was rejected), and a
worker serving with OpenVINO never imports torch, for artifacts from before int8 models too."""
import http.client
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import serving_harness as harness
from conftest import PROJECT_DIR, make_dataset, train_job, untrained_artifact
from image_classifier import constants
from image_classifier.images import open_rgb
from image_classifier.model import load_artifact, read_config
from image_classifier.preprocessing import EvalPixels
from image_classifier.serving import engine, handler, serve, settings
from image_classifier.training import quantize

pytestmark = pytest.mark.skipif(not engine.openvino_available(), reason="openvino is not installed")
# Enough training pictures to calibrate (quantize.MIN_CALIBRATION_PICTURES), a validation split for the gate.
PICTURES = {"train": 34, "valid": 10, "test": 6}


@pytest.fixture(scope="module")
def int8_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    job, exit_code = train_job(tmp, {"epochs": "2"}, channels={"train": make_dataset(tmp / "data", PICTURES)})
    assert exit_code == 0, job.log_file.read_text()[-3000:]
    return job


@pytest.fixture(scope="module")
def test_pictures(tmp_path_factory):
    """The job's test split (conftest draws the same pictures for every tree it makes)."""
    root = make_dataset(tmp_path_factory.mktemp("pictures"), {"test": PICTURES["test"]})
    return sorted((root / "test").rglob("*.[jJ][pP][gG]"))


def served(model_dir, monkeypatch, **env):
    for name in (settings.ENGINE_ENV, settings.OPTIMIZE_ENV, settings.ENGINE_EXPORT_ENV, settings.CORE_SHARE_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return handler.model_fn(str(model_dir))


def top1(model, pictures):
    request = handler.PictureRequest([handler.check_picture(p.read_bytes(), p.name) for p in pictures], 1)
    return handler.predict_fn(request, model).probabilities.argmax(1).tolist()


def test_a_trained_model_s_int8_is_kept_recorded_and_served_with_fp32_s_top1(int8_job, test_pictures, tmp_path,
                                                                             monkeypatch):
    model_dir = int8_job.dir / "model"
    record = read_config(model_dir).quantization
    assert record["decision"] == constants.INT8_ACCEPTED, record
    assert record["valid_pictures"] == 30 and record["calibration_pictures"] == 102
    assert 0 <= record["int8_valid_acc"] <= 1 and record["fp32_valid_acc"] - record["int8_valid_acc"] <= 1 / 30
    assert "within the allowed drop" in record["reason"]
    log = int8_job.log_file.read_text()
    assert "int8_kept=1" in log and f"int8_valid_acc={record['int8_valid_acc']:.4f}" in log
    assert (model_dir / "openvino" / "model-int8.xml").is_file() and (model_dir / "openvino" / "model.xml").is_file()
    assert (model_dir / "model.pth").is_file()  # fp32 stays

    assert len(test_pictures) == 18
    eager = top1(served(model_dir, monkeypatch, **{settings.ENGINE_ENV: "torch", settings.OPTIMIZE_ENV: "false"}),
                 test_pictures)
    in_process = served(model_dir, monkeypatch)  # auto, no export: the worker builds int8 itself
    assert in_process.engine == "openvino-int8" and top1(in_process, test_pictures) == eager
    name, env = serve.export_engine(model_dir, settings.load({}), 0, tmp_path / "engine")
    assert name == "openvino-int8" and env[settings.ENGINE_ENV] == "openvino-int8"
    lean = served(model_dir, monkeypatch, **env)
    assert lean.engine == "openvino-int8" and lean.network is None
    assert top1(lean, test_pictures) == eager
    assert served(model_dir, monkeypatch, **{settings.ENGINE_ENV: "openvino"}).engine == "openvino"  # fp32 asked


def test_the_gate_allows_half_a_point_or_one_picture():
    assert quantize.decide(900, 895, 1000)[0] == constants.INT8_ACCEPTED  # 0.5 points
    assert quantize.decide(900, 894, 1000)[0] == constants.INT8_REJECTED
    assert quantize.decide(30, 29, 30)[0] == constants.INT8_ACCEPTED  # one picture on a tiny set
    assert quantize.decide(30, 28, 30)[0] == constants.INT8_REJECTED
    assert quantize.decide(20, 25, 30)[0] == constants.INT8_ACCEPTED  # better is fine


def test_an_int8_model_broken_by_its_calibration_is_rejected_and_fp32_is_served(int8_job, test_pictures, tmp_path,
                                                                                 monkeypatch):
    model_dir = tmp_path / "model"
    shutil.copytree(int8_job.dir / "model", model_dir)
    shutil.rmtree(model_dir / "openvino")
    network, config = load_artifact(model_dir)
    transform = EvalPixels(config.image_size)
    pixels = np.stack([transform(open_rgb(p.read_bytes())) for p in test_pictures])
    folders = sorted({p.parent.name for p in test_pictures})  # the classes, in the job's order
    labels = np.array([folders.index(p.parent.name) for p in test_pictures])
    # Calibrated on pictures 1000 times too bright: the int8 ranges are so wide that real pictures fall in one step.
    broken = [pixels[i:i + 1] * 1000 for i in range(len(pixels))]
    record = quantize.quantize_model(model_dir, network, config.image_size, broken, [(pixels, labels)])
    assert record["decision"] == constants.INT8_REJECTED, record
    assert record["int8_valid_acc"] < record["fp32_valid_acc"] and "more than the allowed drop" in record["reason"]
    assert read_config(model_dir).quantization == record
    assert not (model_dir / "openvino" / "model-int8.xml").exists()
    name, env = serve.export_engine(model_dir, settings.load({}), 0, tmp_path / "engine")
    assert name == "openvino"
    assert served(model_dir, monkeypatch, **env).engine == "openvino"
    assert served(model_dir, monkeypatch).engine == "openvino"


def test_a_job_on_a_set_too_small_to_calibrate_says_so(trained_model_dir):
    record = read_config(trained_model_dir).quantization
    assert record["decision"] == constants.INT8_SKIPPED and "too small to calibrate" in record["reason"]
    assert not (trained_model_dir / "openvino").exists()


LEAN_WORKER = textwrap.dedent("""
    import json, sys
    from image_classifier.serving import handler
    model = handler.model_fn(sys.argv[1])
    request = handler.PictureRequest([handler.check_picture(open(p, "rb").read(), p) for p in sys.argv[2:]], 1)
    answers = handler.predict_fn(request, model).probabilities.argmax(1).tolist()
    print(json.dumps({"engine": model.engine, "top1": answers,
                      "imported": sorted(m for m in ("torch", "torchvision", "nncf") if m in sys.modules)}))
    """)


def lean_worker(model_dir, env, pictures):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_DIR / "container_src"),
                                                               os.environ.get("PYTHONPATH", "")]), **env)
    result = subprocess.run([sys.executable, "-c", LEAN_WORKER, str(model_dir), *map(str, pictures)], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("artifact", ["int8", "from before int8 models"])
def test_a_worker_serving_with_openvino_never_imports_torch(artifact, int8_job, test_pictures, tmp_path):
    if artifact == "int8":
        model_dir, expected = int8_job.dir / "model", "openvino-int8"
    else:  # no quantization record, no OpenVINO model: serve converts it
        model_dir, expected = untrained_artifact(tmp_path / "old", read_config(int8_job.dir / "model").classes), "openvino"
    name, env = serve.export_engine(model_dir, settings.load({}), 0, tmp_path / "engine")
    answer = lean_worker(model_dir, env, test_pictures)
    assert name == answer["engine"] == expected and answer["imported"] == []
    network, _ = load_artifact(model_dir)
    assert answer["top1"] == engine.eager_logits(network, np.stack(
        [EvalPixels(16)(open_rgb(p.read_bytes())) for p in test_pictures])).argmax(1).tolist()


@pytest.mark.slow
def test_the_model_server_s_workers_serve_int8_without_torch(int8_job, test_pictures, tmp_path_factory):
    """The real serve and MMS: the response names openvino-int8, and no worker process has torch's library
    mapped (checked from outside, in /proc)."""
    if harness.java_missing():
        pytest.skip(harness.JAVA_MISSING)
    tmp_path = tmp_path_factory.mktemp("mms")  # short: MMS's unix sockets live under it
    shutil.copytree(int8_job.dir / "model", tmp_path / "model")
    server = harness.Server(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS=2)
    try:
        server.wait_ready(test_pictures[0].read_bytes(), "image/jpeg")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("POST", "/invocations", body=test_pictures[0].read_bytes(),
                           headers={"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader(settings.ENGINE_HEADER) == "openvino-int8"
        connection.close()
        workers = server.workers()
        assert len(workers) == 2
        for worker in workers:
            libraries = {mapping.path for mapping in worker.memory_maps()}
            assert not [path for path in libraries if "libtorch" in path or "/torch/" in path], worker.pid
        assert "engine openvino-int8" in server.log.read_text(errors="replace")
    finally:
        exit_code, alive = server.stop()
    assert exit_code == 0 and not alive
