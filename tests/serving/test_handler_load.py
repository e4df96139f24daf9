"""How a worker loads its model (serving/handler.py model_fn): the GPU checked first and the one MMS names used,
the threads the settings give, the batch limit timed on one picture, serve's export served without torch (int8
falling back to fp32 there), an artifact's accepted int8 model, and what the worker logs."""
import json
import logging
import os
import shutil
import time

import numpy as np
import pytest
import torch
from mms.context import Context
from PIL import Image

import serving_samples as samples
from conftest import untrained_artifact
from image_classifier import constants
from image_classifier.model import ModelConfig, build_model, fingerprint, load_artifact, save_artifact
from image_classifier.serving import engine, handler, serve, settings

CLASSES = ["Red fox", "Green frog", "Blue whale"]
needs_openvino = pytest.mark.skipif(not engine.openvino_available(), reason="openvino is not installed")
cpu_host = pytest.mark.skipif(torch.cuda.is_available(), reason="what a host without a GPU serves with")
SETTINGS_ENV = (settings.ENGINE_ENV, settings.OPTIMIZE_ENV, settings.ENGINE_EXPORT_ENV, settings.CORE_SHARE_DIR_ENV,
                settings.TORCH_THREADS_ENV, settings.WORKERS_ENV, settings.MAX_BATCH_ENV)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return untrained_artifact(tmp_path_factory.mktemp("model"), CLASSES)


@pytest.fixture(scope="module")
def eager(model_dir):
    """The probabilities eager torch gives the sample request."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in SETTINGS_ENV:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(settings.ENGINE_ENV, "torch")
        monkeypatch.setenv(settings.OPTIMIZE_ENV, "false")
        threads = torch.get_num_threads()
        model = handler.model_fn(str(model_dir))
        torch.set_num_threads(threads)
    return probabilities(model)


@pytest.fixture
def env(monkeypatch):
    """Sets the serving settings given (the others unset); the worker's torch threads are put back after."""
    threads = torch.get_num_threads()
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))

    yield set_env
    torch.set_num_threads(threads)


def messages(caplog):
    return [record.getMessage() for record in caplog.records if record.name == handler.__name__]


def probabilities(model):
    request = handler.input_fn(samples.batch_json(*(samples.jpeg((30 + i, 20)) for i in range(3))), "application/json")
    return handler.predict_fn(request, model).probabilities


def other_network(network, size):
    """`network` with the classes it ranks first on the check input pushed down: an export or int8 model that
    is wrong."""
    other = build_model("resnet18", len(CLASSES)).eval()
    other.load_state_dict(network.state_dict())
    with torch.no_grad():
        top = other(torch.from_numpy(engine.check_pixels(size))).argmax(1).unique()
        other.fc.bias[top] -= 100
    return other


# --------------------------------------------------------------------------------- device, threads
def test_a_worker_checks_its_gpu_before_it_loads_anything(model_dir, env, monkeypatch):
    checks = []
    monkeypatch.setattr(handler, "require_usable_gpu", lambda **kwargs: checks.append(kwargs))
    handler.model_fn(str(model_dir))
    assert checks == [{"exercise": True, "who": f"model server worker, uid {os.getuid()}"}]


def test_each_worker_serves_on_the_gpu_mms_gives_it(model_dir, env, monkeypatch):
    """On a host with 2 GPUs (faked: the artifact loads on the CPU, the load stops at the engine), MMS's gpu_id
    modulo the GPUs, for the artifact and its engine alike."""
    class Loaded(Exception):
        pass

    artifacts, engines = [], []

    def load_artifact_on(model_dir, device):
        artifacts.append(device)
        return load_artifact(model_dir)

    def load_engine(*args, **kwargs):
        engines.append((args[0], type(args[1]).__name__, args[2:], kwargs))
        raise Loaded

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(handler, "require_usable_gpu", lambda **kwargs: None)
    monkeypatch.setattr(handler, "load_artifact", load_artifact_on)
    monkeypatch.setattr(engine, "load", load_engine)
    env(**{settings.TORCH_THREADS_ENV: 3, settings.ENGINE_TOLERANCE_ENV: "0.125", settings.OPTIMIZE_ENV: "false",
           settings.ENGINE_EXPORT_ENV: "/nowhere"})
    for gpu_id in (None, 0, 1, 3):
        with pytest.raises(Loaded):
            handler.model_fn(str(model_dir), Context("model", str(model_dir), None, 1, gpu_id, "1.1.11"))
    with pytest.raises(Loaded):
        handler.model_fn(str(model_dir))
    devices = [torch.device("cuda", index) for index in (0, 0, 1, 1, 0)]
    assert artifacts == devices
    assert engines == [("auto", "ResNet", (16, device, 3, 0.125, False), {"exported": "/nowhere", "int8_model": None})
                       for device in devices]


# 2 workers x 2 threads on 2 cores, sharing off: a fixed split whose share of the cores (1 thread) stays unused
@pytest.mark.parametrize("workers, threads", [(1, 2), (1, 1), (2, 2)])
def test_a_worker_that_shares_no_cores_runs_on_its_threads(workers, threads, model_dir, env, monkeypatch):
    monkeypatch.setattr(settings, "cpu_count", lambda: 2)
    env(**{settings.ENGINE_ENV: "torch", settings.TORCH_THREADS_ENV: threads, settings.WORKERS_ENV: workers,
           settings.SHARE_CORES_ENV: "false"})
    model = handler.model_fn(str(model_dir))
    assert model.settings.narrow_threads == threads // workers
    assert torch.get_num_threads() == threads and model.settings.torch_threads == threads
    assert model.core_share is None and model.narrow_forward is model.forward


def test_the_batch_limit_is_timed_on_one_picture_of_the_model_s_size(model_dir, env, monkeypatch, caplog):
    timed = []

    def seconds_per_picture(forward, example):
        timed.append((forward, example.shape, example.dtype))
        return 0.5

    monkeypatch.setattr(handler, "seconds_per_picture", seconds_per_picture)
    env(**{settings.ENGINE_ENV: "torch"})
    model = handler.model_fn(str(model_dir))
    assert timed == [(model.narrow_forward, (1, 3, 16, 16), np.float32)] and model.max_batch == 30


def test_timing_a_picture_takes_the_faster_of_two_forward_passes():
    calls = []

    def forward(example):
        calls.append(example)
        time.sleep(0.3 if len(calls) == 1 else 0.01)  # the first pass does some set-up

    example = np.zeros((1, 3, 16, 16), np.float32)
    assert handler.seconds_per_picture(forward, example) < 0.2
    assert len(calls) == 2 and all(call is example for call in calls)


@cpu_host
@pytest.mark.parametrize("engine_name", ["torch", pytest.param("openvino", marks=needs_openvino)])
def test_the_worker_logs_what_it_loaded(engine_name, model_dir, env, caplog):
    caplog.set_level(logging.INFO, logger=handler.__name__)
    env(**{settings.ENGINE_ENV: engine_name, settings.TORCH_THREADS_ENV: 1, settings.MAX_BATCH_ENV: 7})
    model = handler.model_fn(str(model_dir))
    assert model.engine == engine_name and model.max_batch == 7
    assert messages(caplog) == [
        f"Loaded resnet18 (3 classes, 16 px) on cpu, 1 thread(s), engine: {engine_name}, optimised: True",
        f"Batch limit: 7 picture(s) per request ({settings.MAX_BATCH_ENV}=7)"]


# ------------------------------------------------------------------------------- serve's export
@cpu_host
@needs_openvino
def test_a_lean_worker_serves_serve_s_export_without_torch(model_dir, tmp_path, env, eager):
    name, worker_env = serve.export_engine(model_dir, settings.load({}), 0, tmp_path / "engine")
    env(**worker_env, **{settings.TORCH_THREADS_ENV: 1})  # not OpenVINO's default (every core)
    model = handler.model_fn(str(model_dir))
    assert (name, model.engine, model.network, model.device) == ("openvino", "openvino", None, "cpu")
    assert model.settings == settings.load()  # a CPU host's
    assert model.forward.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert model.classes == CLASSES and model.decode_side == 18
    assert np.allclose(probabilities(model), eager, atol=1e-4)


@cpu_host
@needs_openvino
def test_a_lean_worker_falls_back_from_a_failing_int8_model_to_the_export_s_fp32(model_dir, tmp_path, env, eager):
    network, _ = load_artifact(model_dir)
    wrong = engine.export(other_network(network, 16), 16, tmp_path / "wrong")
    engine.export(network, 16, tmp_path / "engine", int8=wrong, weights=fingerprint(model_dir))
    env(**{settings.ENGINE_ENV: "openvino-int8", settings.ENGINE_EXPORT_ENV: tmp_path / "engine"})
    model = handler.model_fn(str(model_dir))
    assert (model.engine, model.network) == ("openvino", None)
    assert np.allclose(probabilities(model), eager, atol=1e-4)


@needs_openvino
def test_an_export_of_other_weights_is_refused_and_the_worker_loads_torch(model_dir, tmp_path, env):
    network, _ = load_artifact(model_dir)
    engine.export(other_network(network, 16), 16, tmp_path / "engine", weights="other weights")
    env(**{settings.ENGINE_ENV: "openvino", settings.ENGINE_EXPORT_ENV: tmp_path / "engine"})
    model = handler.model_fn(str(model_dir))
    assert model.engine == "torch" and model.network is not None


# ----------------------------------------------------------------------------- an int8 artifact
@pytest.fixture(scope="module")
def int8_artifacts(model_dir, tmp_path_factory):
    """{decision: the artifact with OpenVINO models and an int8 one its training job decided so on}. The "int8"
    model here answers twice eager's logits (the same top-1 classes), which tells which file serves."""
    if not engine.openvino_available():
        pytest.skip("openvino is not installed")
    artifacts = {}
    for decision in (constants.INT8_ACCEPTED, constants.INT8_REJECTED):
        folder = tmp_path_factory.mktemp("int8") / "model"
        shutil.copytree(model_dir, folder)
        network, _ = load_artifact(folder)
        models = folder / constants.OPENVINO_FOLDER
        engine.export(network, 16, models)
        with torch.no_grad():
            network.fc.weight *= 2
            network.fc.bias *= 2
        engine.copy_model(engine.export(network, 16, folder / "scaled"), models, constants.OPENVINO_INT8_MODEL)
        config = json.loads((folder / "model.json").read_text())
        config["quantization"] = {"decision": decision}
        (folder / "model.json").write_text(json.dumps(config))
        artifacts[decision] = folder
    return artifacts


@cpu_host
@pytest.mark.parametrize("decision, requested, expected", [
    ("accepted", None, "openvino-int8"), ("accepted", "openvino", "openvino"), ("accepted", "torch", "torch"),
    ("rejected", None, "openvino")])
def test_an_artifact_s_accepted_int8_model_is_served_unless_another_engine_is_asked_for(decision, requested, expected,
                                                                                        int8_artifacts, env):
    if requested:
        env(**{settings.ENGINE_ENV: requested})
    model = handler.model_fn(str(int8_artifacts[decision]))
    assert model.engine == expected
    pixels = engine.check_pixels(16)
    network, _ = load_artifact(int8_artifacts[decision])
    scale = 2 if expected == "openvino-int8" else 1  # the int8 file serves, and only then
    assert engine.difference(model.forward(pixels), scale * engine.eager_logits(network, pixels))[0] < 1e-4


@cpu_host
def test_a_worker_that_shares_the_cores_runs_a_request_s_other_torch_work_on_its_share(model_dir, env, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setattr(settings, "cpu_count", lambda: 2)
    env(**{settings.ENGINE_ENV: "torch", settings.CORE_SHARE_DIR_ENV: tmp_path})
    model = handler.model_fn(str(model_dir))
    assert model.core_share is not None and (model.settings.torch_threads, model.settings.narrow_threads) == (2, 1)
    assert torch.get_num_threads() == 1


def test_pictures_are_normalised_with_the_artifact_s_own_mean_and_std(tmp_path, env):
    config = ModelConfig("resnet18", CLASSES, 16, mean=(0.5, 0.25, 0.0), std=(0.25, 0.5, 1.0))
    save_artifact(tmp_path, build_model("resnet18", len(CLASSES)), config)
    model = handler.model_fn(str(tmp_path))
    pixels = model.transform(Image.new("RGB", (40, 30), (255, 255, 255)))
    assert pixels.shape == (3, 16, 16) and np.allclose(pixels, np.float32([2.0, 1.5, 1.0]).reshape(3, 1, 1))


@pytest.mark.parametrize("per_picture, limit, warned", [(0.0, 32, False), (15.0, 1, False), (15.5, 1, True)])
def test_the_batch_limit_at_its_edges(per_picture, limit, warned, caplog):
    served = settings.load({settings.BATCH_SECONDS_ENV: "15"})
    assert handler.batch_limit(served, per_picture)[0] == limit
    warning = (f"One picture takes {per_picture:.1f} s, more than {settings.BATCH_SECONDS_ENV}=15: requests may "
               "time out")
    assert messages(caplog) == ([warning] if warned else [])


def test_the_batch_limit_says_how_it_was_derived():
    served = settings.load({settings.BATCH_SECONDS_ENV: "15"})
    assert handler.batch_limit(served, 4.0) == (3, (
        f"a forward pass takes 4000 ms per picture here, 3 take 12.0 s of the 15 s allowed "
        f"({settings.BATCH_SECONDS_ENV}; SageMaker's invocation limit is {settings.INVOCATION_SECONDS} s), at most "
        f"{settings.DEFAULT_MAX_BATCH}"))
