"""The inference engines (serving/engine.py): the same answers as eager PyTorch, a broken export caught at
load and served with torch, artifacts without an export served, serve's one export, no telemetry."""
import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import make_dataset, untrained_artifact
from image_classifier.model import build_model, load_artifact
from image_classifier.serving import engine, handler, serve, settings

needs_openvino = pytest.mark.skipif(not engine.openvino_available(), reason="openvino is not installed")
CLASSES = ["Red fox", "Green frog", "Blue whale"]


@pytest.fixture(scope="module")
def test_pictures(tmp_path_factory):
    """The trained model's test split (conftest draws the same pictures for every tree it makes)."""
    root = make_dataset(tmp_path_factory.mktemp("pictures"), {"test": 6})
    return sorted((root / "test").rglob("*.[jJ][pP][gG]"))


def top_k(model, pictures, k=3):
    request = handler.PictureRequest([handler.check_picture(p.read_bytes(), p.name) for p in pictures], k)
    prediction = handler.predict_fn(request, model)
    return prediction.probabilities, [json.dumps(handler.top_labels(row, model.classes, k)) for row in
                                      prediction.probabilities]


def served(model_dir, monkeypatch, **env):
    for name in (settings.ENGINE_ENV, settings.OPTIMIZE_ENV, settings.ENGINE_EXPORT_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return handler.model_fn(str(model_dir))


@pytest.fixture(scope="module")
def eager(trained_model_dir, test_pictures):
    with pytest.MonkeyPatch.context() as monkeypatch:
        model = served(trained_model_dir, monkeypatch, **{settings.ENGINE_ENV: "torch", settings.OPTIMIZE_ENV: "false"})
    return top_k(model, test_pictures)


@pytest.mark.parametrize("name", ["torch", pytest.param("openvino", marks=needs_openvino)])
def test_each_engine_serves_eager_s_top_k_on_the_test_pictures(name, trained_model_dir, test_pictures, eager,
                                                               monkeypatch):
    model = served(trained_model_dir, monkeypatch, **{settings.ENGINE_ENV: name})
    assert model.engine == name
    probabilities, answers = top_k(model, test_pictures)
    expected_probabilities, expected = eager
    assert [json.loads(a)[0]["index"] for a in answers] == [json.loads(a)[0]["index"] for a in expected]
    assert [[item["label"] for item in json.loads(a)] for a in answers] == \
        [[item["label"] for item in json.loads(a)] for a in expected]
    assert float(np.abs(probabilities - expected_probabilities).max()) < 1e-4


@needs_openvino
def test_auto_picks_openvino_on_a_cpu_and_torch_on_a_gpu():
    assert engine.resolve("auto", "cpu") == "openvino"
    assert engine.resolve("auto", "cuda") == "torch"
    assert engine.resolve("openvino", "cuda") == "torch"
    assert engine.resolve("torch", "cpu") == "torch"


@pytest.mark.parametrize("name", ["torch", pytest.param("openvino", marks=needs_openvino)])
def test_each_engine_serves_a_mobilenet_as_eager_does(name, tmp_path, test_pictures, monkeypatch):
    """The other family: the engine's optimisations (batch-norm folding, OpenVINO's conversion of
    hardswish and squeeze-excitation) keep eager's answers."""
    model_dir = untrained_artifact(tmp_path, CLASSES, "mobilenet_v3_small", image_size=64)
    expected_probabilities, expected = top_k(served(model_dir, monkeypatch, **{settings.ENGINE_ENV: "torch",
                                                                               settings.OPTIMIZE_ENV: "false"}),
                                             test_pictures)
    model = served(model_dir, monkeypatch, **{settings.ENGINE_ENV: name})
    assert model.engine == name
    probabilities, answers = top_k(model, test_pictures)
    assert [[item["label"] for item in json.loads(a)] for a in answers] == \
        [[item["label"] for item in json.loads(a)] for a in expected]
    assert float(np.abs(probabilities - expected_probabilities).max()) < 1e-4


@pytest.fixture(scope="module")
def other_export(tmp_path_factory):
    """An export of another network of the same shape (other weights): a stale or broken export."""
    if not engine.openvino_available():
        pytest.skip("openvino is not installed")
    torch.manual_seed(99)
    other = build_model("resnet18", len(CLASSES)).eval()
    return engine.export(other, 16, tmp_path_factory.mktemp("broken-export")).parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return untrained_artifact(tmp_path_factory.mktemp("model"), CLASSES)


def test_a_broken_export_is_caught_at_load_and_served_with_torch(model_dir, other_export, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    model = served(model_dir, monkeypatch, **{settings.ENGINE_ENV: "openvino",
                                              settings.ENGINE_EXPORT_ENV: str(other_export)})
    assert model.engine == "torch"
    assert "differ from eager PyTorch" in caplog.text and "serving with torch" in caplog.text
    reference = served(model_dir, monkeypatch, **{settings.ENGINE_ENV: "torch"})
    request = handler.PictureRequest([handler.check_picture(handler_picture())], 3)
    assert np.allclose(handler.predict_fn(request, model).probabilities,
                       handler.predict_fn(request, reference).probabilities)


def handler_picture():
    import serving_samples

    return serving_samples.jpeg((30, 20))


@needs_openvino
def test_an_engine_that_fails_to_load_is_served_with_torch(model_dir, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(engine, "convert_openvino", broken)
    model = served(model_dir, monkeypatch, **{settings.ENGINE_ENV: "openvino"})
    assert model.engine == "torch" and "conversion failed" in caplog.text


@needs_openvino
def test_an_artifact_without_an_export_is_converted_at_load(model_dir, monkeypatch):
    model = served(model_dir, monkeypatch)  # auto, no export from serve: the worker converts it itself
    assert model.engine == "openvino"
    assert len(handler.predict_fn(handler.PictureRequest([handler.check_picture(handler_picture())], 3),
                                  model).probabilities) == 1


@needs_openvino
def test_serve_exports_once_for_its_workers(model_dir, tmp_path, monkeypatch):
    name, env = serve.export_engine(model_dir, settings.load({}), 0, tmp_path / "engine")
    assert name == "openvino" and env[settings.ENGINE_EXPORT_ENV] == str(tmp_path / "engine")
    assert (tmp_path / "engine" / engine.OPENVINO_MODEL).is_file()

    def must_not_convert(*args, **kwargs):
        raise AssertionError("a worker converted the model again")

    monkeypatch.setattr(engine, "convert_openvino", must_not_convert)
    assert served(model_dir, monkeypatch, **env).engine == "openvino"


@needs_openvino
def test_serve_falls_back_to_torch_when_its_export_differs(model_dir, tmp_path, monkeypatch):
    network, _ = load_artifact(model_dir)
    with torch.no_grad():
        network.fc.bias += 5 * torch.arange(len(CLASSES), dtype=torch.float32)  # an export that is wrong
    monkeypatch.setattr(engine, "convert_openvino",
                        lambda _network, size, convert=engine.convert_openvino: convert(network, size))
    name, env = serve.export_engine(model_dir, settings.load({}), 0, tmp_path / "engine")
    assert (name, env) == ("torch", {settings.ENGINE_ENV: "torch"})


def test_the_engine_setting_is_checked():
    with pytest.raises(settings.SettingsError, match=settings.ENGINE_ENV):
        settings.load({settings.ENGINE_ENV: "onnx"})
    assert settings.load({settings.ENGINE_ENV: "OpenVINO"}).engine == "openvino"


@needs_openvino
def test_workers_do_not_pin_their_threads_to_the_same_cores():
    """OpenVINO pins its threads by default, each process from the first core: two single-thread workers
    would share one core and leave the other idle."""
    converted = engine.convert_openvino(build_model("resnet18", len(CLASSES)).eval(), 16)
    compiled = engine.openvino_forward(converted, threads=1).compiled
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


@needs_openvino
def test_openvino_s_usage_reports_are_off():
    engine.import_openvino()
    from openvino.tools.ovc import convert_impl

    assert sys.modules["openvino_telemetry"] is None
    assert convert_impl.tm.__name__.endswith("telemetry_stub")


@needs_openvino
def test_models_freed_in_any_order_leave_a_signal_stack_that_exists(tmp_path):
    """Two compiled models freed in the order they were made, then a signal with a Python handler: without
    same_signal_stack the thread is left on an unmapped alternate stack and the process dies (SIGSEGV)."""
    script = tmp_path / "two_models.py"
    script.write_text(textwrap.dedent("""
        import faulthandler, gc, os, signal, time
        import torch
        from image_classifier.model import build_model
        from image_classifier.serving import engine
        faulthandler.enable()  # an alternate stack of the thread's own, as pytest's and serve's have
        converted = engine.convert_openvino(build_model("resnet18", 3).eval(), 16)
        first, second = engine.openvino_forward(converted, 2), engine.openvino_forward(converted, 1)
        first(torch.zeros(1, 3, 16, 16)), second(torch.zeros(1, 3, 16, 16))
        del first
        gc.collect()
        del second
        gc.collect()
        signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)
        print("alive", flush=True)
        """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["handled", "alive"]


@needs_openvino
def test_an_engine_within_the_tolerance_but_with_another_top1_class_is_refused(model_dir, monkeypatch, caplog):
    """The check asks for both: logits within the tolerance AND the same top-1 class. Two classes nearly
    tied on the fixed input, swapped by an export that differs by a quarter of the tolerance."""
    network, _ = load_artifact(model_dir)
    example = torch.from_numpy(engine.check_pixels(16))
    with torch.no_grad():
        logits = network(example)[0]
        first, second = logits.topk(2).indices.tolist()
        nudge = settings.DEFAULT_ENGINE_TOLERANCE / 8 * float(network(example).abs().max())
        network.fc.bias[second] += float(logits[first] - logits[second]) - nudge  # first leads by `nudge`
        swapped = build_model("resnet18", len(CLASSES)).eval()
        swapped.load_state_dict(network.state_dict())
        swapped.fc.bias[second] += 2 * nudge  # second leads by `nudge`
        relative, same_top1 = engine.difference(swapped(example), network(example))
    assert relative < settings.DEFAULT_ENGINE_TOLERANCE and not same_top1
    monkeypatch.setattr(engine, "convert_openvino",
                        lambda _network, size, convert=engine.convert_openvino: convert(swapped, size))
    caplog.set_level(logging.INFO)
    assert engine.checked("openvino", network, 16, 1, settings.DEFAULT_ENGINE_TOLERANCE) is None
    assert "DIFFERS" in caplog.text
    served_by, _ = engine.load("openvino", network, 16, "cpu", 1, settings.DEFAULT_ENGINE_TOLERANCE)
    assert served_by.name == "torch"


def test_an_optimised_torch_model_that_differs_from_eager_serves_eager(model_dir, caplog):
    """Folding and channels_last are checked like an engine: past the tolerance (here none at all, which the
    folded model's rounding passes), the worker serves the eager network itself."""
    network, _ = load_artifact(model_dir)
    pixels = engine.check_pixels(16)
    with torch.inference_mode():
        expected = network(torch.from_numpy(pixels)).numpy()
    served_by, serving = engine.load("torch", network, 16, "cpu", 1, tolerance=0.0)
    assert serving is network and "differs from eager fp32" in caplog.text
    assert np.array_equal(served_by.forward(pixels), expected)
    caplog.clear()
    served_by, serving = engine.load("torch", network, 16, "cpu", 1, settings.DEFAULT_ENGINE_TOLERANCE)
    assert serving is not network and "differs" not in caplog.text  # the folded one, within the tolerance
    assert not np.array_equal(served_by.forward(pixels), expected)
