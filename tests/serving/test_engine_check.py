"""The engines' load-time check (serving/engine.py) on a tiny network, fast enough to run against every mutant:
which engine a request gets, how answers are compared with eager fp32, what serve's export holds, the fallback
int8 -> OpenVINO fp32 -> torch, and what each step tells the operator."""
import logging
import re
import sys

import numpy as np
import pytest
import torch

from image_classifier.serving import engine, settings

needs_openvino = pytest.mark.skipif(not engine.openvino_available(), reason="openvino is not installed")
TOLERANCE = settings.DEFAULT_ENGINE_TOLERANCE
SIZE = 8  # pixels a side: the check's input is CHECK_BATCH pictures this size
ENV = settings.ENGINE_ENV


def tiny_network(seed=0):
    """Convolution, batch norm (with running statistics, so folding it changes the weights), pooling, classifier."""
    torch.manual_seed(seed)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():
        network[1].running_mean.uniform_(-1, 1)
        network[1].running_var.uniform_(0.5, 2)
    return network.eval()


def other_network():
    """The tiny network with the classes it ranks first on the check input pushed down: other answers, and
    another top-1 class on every check picture."""
    network = tiny_network()
    with torch.no_grad():
        top = network(torch.from_numpy(engine.check_pixels(SIZE))).argmax(1).unique()
        network[5].bias[top] -= 10
    return network


def scaled_network():
    """The tiny network with every logit doubled: far outside the fp32 tolerance, every top-1 the same, as an
    int8 model may be."""
    network = tiny_network()
    with torch.no_grad():
        network[5].weight *= 2
        network[5].bias *= 2
    return network


class ThreadRecorder(torch.nn.Module):
    """The tiny network, noting how many torch threads each forward pass ran on."""

    def __init__(self):
        super().__init__()
        self.network, self.threads = tiny_network(), []

    def forward(self, inputs):
        self.threads.append(torch.get_num_threads())
        return self.network(inputs)


@pytest.fixture(scope="module")
def network():
    return tiny_network()


@pytest.fixture(scope="module")
def pixels():
    return engine.check_pixels(SIZE)


@pytest.fixture(scope="module")
def expected(network, pixels):
    with torch.inference_mode():
        return network(torch.from_numpy(pixels)).numpy()


@pytest.fixture(scope="module")
def export(network, tmp_path_factory):
    """serve's export of `network`, from weights fingerprinted "weights-1"."""
    if not engine.openvino_available():
        pytest.skip("openvino is not installed")
    folder = tmp_path_factory.mktemp("export") / "not" / "made" / "yet"
    assert engine.export(network, SIZE, folder, weights="weights-1") == folder / engine.OPENVINO_MODEL
    return folder


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    """An "int8" model: answers the fp32 check would refuse, with eager's top-1 on every check picture."""
    if not engine.openvino_available():
        pytest.skip("openvino is not installed")
    return engine.export(scaled_network(), SIZE, tmp_path_factory.mktemp("int8"))


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """The OpenVINO model of another network of the same shape: a stale or broken export or int8 model."""
    if not engine.openvino_available():
        pytest.skip("openvino is not installed")
    return engine.export(other_network(), SIZE, tmp_path_factory.mktemp("other"))


def messages(caplog, level=logging.WARNING):
    """What the project's code logged at `level` or above."""
    return [record.getMessage() for record in caplog.records
            if record.levelno >= level and record.name.startswith("image_classifier")]


# -------------------------------------------------------------------------------------- which engine
CPU_CHOICES = [  # requested, device, the artifact has an accepted int8 model, engine, warning
    ("torch", "cpu", True, "torch", None),
    ("auto", "cpu", False, "openvino", None),
    ("auto", "cpu", True, "openvino-int8", None),
    ("openvino", "cpu", True, "openvino", None),
    ("openvino-int8", "cpu", True, "openvino-int8", None),
    ("openvino-int8", "cpu", False, "openvino", f"{ENV}=openvino-int8 but the artifact holds no accepted int8 model "
                                                "(model.json's quantization record): serving OpenVINO fp32"),
    ("torch", "cuda:0", False, "torch", None),
    ("auto", torch.device("cuda", 1), True, "torch", None),
    ("openvino", "cuda:0", False, "torch", f"{ENV}=openvino: OpenVINO does not run on NVIDIA GPUs; serving with "
                                           "torch on cuda:0"),
    ("openvino-int8", "cuda:1", True, "torch", f"{ENV}=openvino-int8: OpenVINO does not run on NVIDIA GPUs; serving "
                                               "with torch on cuda:1"),
]


@needs_openvino
@pytest.mark.parametrize("requested, device, int8, expected, warning", CPU_CHOICES)
def test_the_engine_served_and_the_warning_when_it_is_not_the_one_asked_for(requested, device, int8, expected,
                                                                             warning, caplog):
    assert engine.resolve(requested, device, int8=int8) == expected
    assert messages(caplog) == ([warning] if warning else [])


@pytest.mark.parametrize("requested, int8, warning", [
    ("torch", False, None), ("auto", True, None),
    ("openvino", False, f"{ENV}=openvino but openvino is not installed; serving with torch"),
    ("openvino-int8", True, f"{ENV}=openvino-int8 but openvino is not installed; serving with torch")])
def test_without_openvino_every_engine_is_torch(requested, int8, warning, monkeypatch, caplog):
    monkeypatch.setattr(engine, "openvino_available", lambda: False)
    assert engine.resolve(requested, "cpu", int8=int8) == "torch"
    assert messages(caplog) == ([warning] if warning else [])


def test_openvino_is_unavailable_when_it_cannot_be_imported(monkeypatch):
    def missing():
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(engine, "import_openvino", missing)
    assert engine.openvino_available() is False


@needs_openvino
def test_openvino_is_imported_with_its_usage_reports_hidden(monkeypatch):
    monkeypatch.delitem(sys.modules, "openvino_telemetry", raising=False)
    assert engine.openvino_available() is True
    assert sys.modules["openvino_telemetry"] is None


def test_an_artifact_without_int8_is_not_served_int8_by_default():
    if engine.openvino_available():
        assert engine.resolve("auto", "cpu") == "openvino"


# ------------------------------------------------------------------------------------ the comparison
def test_the_check_input_is_the_same_standard_normal_pictures_every_time(pixels):
    assert pixels.dtype == np.float32 and pixels.shape == (engine.CHECK_BATCH, 3, SIZE, SIZE)
    assert np.array_equal(engine.check_pixels(SIZE), pixels)
    assert abs(float(pixels.mean())) < 0.2 and 0.8 < float(pixels.std()) < 1.2


REFERENCE = np.array([[0.1, 0.4, -0.2], [0.3, -0.1, 0.2]], np.float32)  # largest logit 0.4: below 1


def test_the_logit_difference_is_relative_to_the_largest_logit():
    relative, same_top1 = engine.difference(REFERENCE + np.float32([[0, 0, 0.04], [0, 0, 0]]), REFERENCE)
    assert relative == pytest.approx(0.1, rel=1e-4) and same_top1
    assert engine.difference(REFERENCE * 2, REFERENCE) == (pytest.approx(1.0), True)
    assert engine.difference(np.zeros((1, 3)), np.zeros((1, 3))) == (0.0, True)


def test_one_picture_with_another_top1_class_is_a_disagreement():
    swapped = REFERENCE.copy()
    swapped[1] = [0.2, -0.1, 0.3]  # the second picture's top-1 moves from class 0 to class 2
    assert engine.difference(swapped, REFERENCE)[1] is False
    assert engine.difference(REFERENCE, swapped)[1] is False


def test_differences_below_float32_s_resolution_are_none():
    """Engines answer in float32: a float64 answer is compared at float32."""
    finer = REFERENCE.astype(np.float64) + 1e-9
    assert engine.difference(finer, REFERENCE) == (0.0, True)
    assert engine.difference(REFERENCE, finer) == (0.0, True)


def test_int8_agreement_is_the_share_of_pictures_with_the_same_top1():
    reference = np.eye(4, dtype=np.float32)
    three_of_four = reference[[0, 1, 2, 0]]
    assert engine.agreement(three_of_four, reference) == 0.75
    assert engine.agreement(reference, reference) == 1.0


@pytest.mark.parametrize("name", ["torch", "openvino"])
def test_an_fp32_engine_passes_within_the_tolerance_with_every_top1_the_same(name):
    reference = np.array([[1.0, 0.0], [0.0, 0.5]], np.float32)
    at_tolerance = reference + np.float32([[0.25, 0], [0, 0]])
    assert engine.judge(name, at_tolerance, reference, 0.25) == (
        True, "largest logit difference 2.50e-01 of the largest logit, tolerance 2e-01; top-1 agrees")
    assert engine.judge(name, at_tolerance, reference, 0.24)[0] is False
    other_top1 = reference.copy()
    other_top1[1] = [0.6, 0.5]  # within 0.9 of the largest logit, but class 0 first
    passes, found = engine.judge(name, other_top1, reference, 0.9)
    assert not passes and found.endswith("tolerance 9e-01; top-1 DIFFERS")


def test_int8_passes_on_top1_agreement_alone():
    reference = np.eye(4, dtype=np.float32)
    needed = f"at least {settings.INT8_MIN_AGREEMENT:.0%} needed"
    assert engine.judge("openvino-int8", reference[[0, 1, 2, 0]] * 9, reference, 0.0) == (
        True, f"top-1 agreement with eager fp32 75%, {needed}")
    assert engine.judge("openvino-int8", reference[[0, 1, 0, 0]], reference, 1.0) == (
        False, f"top-1 agreement with eager fp32 50%, {needed}")


# ------------------------------------------------------------------------------------------- torch
def test_the_optimised_torch_network_is_folded_channels_last_and_fp32_on_a_cpu(network, pixels, expected):
    folded, forward = engine.torch_forward(network, torch.zeros(1, 3, SIZE, SIZE))
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    convolution = next(module for module in folded.modules() if isinstance(module, torch.nn.Conv2d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    assert {parameter.dtype for parameter in folded.parameters()} == {torch.float32}
    with torch.inference_mode():
        answers = forward(torch.from_numpy(pixels))
    assert answers.dtype == torch.float32 and np.allclose(answers.numpy(), expected, atol=1e-5)
    assert engine.torch_forward(network, torch.zeros(1, 3, SIZE, SIZE), optimize=False) == (network, network)


class GpuPicture:
    """Stands for a picture on a GPU (a CPU tensor inside): torch_forward reads only its device, and runs it once."""
    device = torch.device("cuda", 0)

    def contiguous(self, memory_format):
        return torch.zeros(1, 3, SIZE, SIZE).contiguous(memory_format=memory_format)


def test_on_a_gpu_the_optimised_network_runs_in_half_precision(network, pixels, expected):
    """Half precision and CPU: torch runs fp16 convolutions on a CPU too, so the choice shows without a GPU."""
    half, forward = engine.torch_forward(network, GpuPicture())
    assert {parameter.dtype for parameter in half.parameters()} == {torch.float16}
    with torch.inference_mode():
        answers = forward(torch.from_numpy(pixels))  # float32 in: halved on the way, float32 out
    assert answers.dtype == torch.float32 and engine.difference(answers.numpy(), expected)[0] < 0.01


def test_asked_for_openvino_on_a_gpu_load_never_builds_it(network, monkeypatch):
    monkeypatch.setattr(engine, "checked", lambda *args, **kwargs: pytest.fail("an OpenVINO engine for a GPU"))
    try:
        engine.load("openvino", network, SIZE, torch.device("cuda", 0), 1, TOLERANCE)
    except (RuntimeError, AssertionError):  # no GPU (or the network on the CPU): torch cannot run it there
        pass


def test_a_torch_engine_runs_on_its_threads_and_gives_the_worker_its_own_back():
    recorder = ThreadRecorder()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        served_by, serving = engine.load("torch", recorder, SIZE, "cpu", 1, TOLERANCE, optimize=False)
        assert serving is recorder and served_by.name == "torch"
        recorder.threads.clear()
        answers = served_by.forward(engine.check_pixels(SIZE))
        served_by.at_threads(1)(engine.check_pixels(SIZE))
        engine.torch_engine_forward(recorder, "cpu")(engine.check_pixels(SIZE))
        assert recorder.threads == [1, 1, 2] and torch.get_num_threads() == 2
        eager = engine.eager_logits(recorder.network, engine.check_pixels(SIZE))
        assert answers.dtype == np.float32 and np.allclose(answers, eager, atol=1e-6)
    finally:
        torch.set_num_threads(before)


def test_the_torch_engine_runs_on_the_device_it_is_loaded_for(network, pixels, expected, monkeypatch):
    """The meta device stands for a GPU (shapes without data): the warm-up example is made there, and the check's,
    the engine's and the other threads' forward passes get their pictures there; answers come back as CPU arrays."""
    meta, seen = torch.device("meta"), []

    def optimised(eager, example, optimize=True):
        seen.append(("warm-up", example.device, optimize))

        def forward(batch):  # a stand-in for the network on the GPU: eager's answers, in half precision
            seen.append(("forward", batch.device, tuple(batch.shape)))
            return torch.from_numpy(expected[:len(batch)]).half()
        return eager, forward

    monkeypatch.setattr(engine, "torch_forward", optimised)
    served_by, serving = engine.load("torch", network, SIZE, meta, 1, TOLERANCE)
    answers = [served_by.forward(pixels), served_by.at_threads(2)(pixels[:1])]
    assert serving is network and [a.dtype for a in answers] == [np.float32, np.float32]
    assert seen == [("warm-up", meta, True), ("forward", meta, pixels.shape), ("forward", meta, pixels.shape),
                    ("forward", meta, (1, *pixels.shape[1:]))]


def test_eager_answers_come_from_the_network_s_own_device(pixels):
    class OnMeta(torch.nn.Module):  # a network whose weights are on the meta device, standing for a GPU
        def __init__(self):
            super().__init__()
            self.weight, self.devices = torch.nn.Parameter(torch.empty(1, device="meta")), []

        def forward(self, batch):
            self.devices.append(batch.device)
            return torch.ones(len(batch), 5, dtype=torch.float16)

    network = OnMeta()
    answers = engine.eager_logits(network, pixels)
    assert network.devices == [torch.device("meta")]
    assert answers.dtype == np.float32 and np.array_equal(answers, np.ones((len(pixels), 5), np.float32))


def test_the_optimised_torch_model_is_served_when_it_passes_the_check(network, pixels, expected, caplog):
    caplog.set_level(logging.INFO)
    served_by, serving = engine.load("torch", network, SIZE, "cpu", 1, TOLERANCE)
    assert served_by.name == "torch" and serving is not network
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in serving.modules())
    assert np.allclose(served_by.forward(pixels), expected, atol=1e-5)
    assert np.allclose(served_by.at_threads(1)(pixels), expected, atol=1e-5)
    assert messages(caplog) == []


def test_an_optimised_torch_model_that_fails_the_check_serves_eager_fp32(network, pixels, expected, caplog):
    """A tolerance below zero: no answer passes, so the check alone decides."""
    served_by, serving = engine.load("torch", network, SIZE, "cpu", 1, tolerance=-1.0)
    assert serving is network
    assert np.allclose(served_by.forward(pixels), expected, atol=1e-6)
    assert np.allclose(served_by.at_threads(1)(pixels), expected, atol=1e-6)
    [message] = messages(caplog)
    assert re.fullmatch(r"The optimised torch model differs from eager fp32 \(largest logit difference \S+ of the "
                        r"largest logit, tolerance -1e\+00; top-1 agrees\): serving plain eager fp32", message), message


# ---------------------------------------------------------------------------------------- openvino
@needs_openvino
def test_an_openvino_forward_is_tuned_for_one_request_at_a_time_in_fp32(network, pixels, expected):
    forward = engine.openvino_forward(engine.convert_openvino(network, SIZE), threads=2)
    compiled = forward.compiled
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    for batch in (pixels, pixels[:1]):  # any batch size
        assert engine.difference(forward(batch), expected[:len(batch)])[0] < 1e-5
    # any float type and memory layout: OpenVINO converts them (a float64 or Fortran-order array answers the same)
    assert np.array_equal(forward(np.asfortranarray(pixels.astype(np.float64))), forward(pixels))
    first = forward(pixels)
    assert np.array_equal(forward(pixels), first)
    assert not np.shares_memory(forward(pixels[:1]), first)  # a copy, not the request's reused buffer


@needs_openvino
def test_the_converted_model_takes_any_batch_of_pictures_of_its_size(network):
    [picture_input] = engine.convert_openvino(network, SIZE).inputs
    assert str(picture_input.get_partial_shape()) == f"[?,3,{SIZE},{SIZE}]"
    assert picture_input.get_element_type().get_type_name() == "f32"


@needs_openvino
def test_the_export_holds_the_fp32_model_the_check_input_and_eager_s_answers(export, pixels, expected):
    import openvino

    constants = [operation for operation in openvino.Core().read_model(export / engine.OPENVINO_MODEL).get_ops()
                 if operation.get_type_name() == "Constant"]
    assert constants and "f16" not in {operation.get_element_type().get_type_name() for operation in constants}
    reference = np.load(export / engine.REFERENCE_FILE)
    assert np.array_equal(reference["pixels"], pixels) and np.array_equal(reference["logits"], expected)
    assert str(reference["weights"]) == "weights-1"
    assert engine.exported_engines(export) == ["openvino"]


@needs_openvino
def test_the_export_copies_the_artifact_s_models_and_converts_nothing(export, other_model, network, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(engine, "convert_openvino", pytest.fail)
    (tmp_path / "existing").mkdir()
    assert engine.export(network, SIZE, tmp_path / "existing", saved=other_model, int8=export / engine.OPENVINO_MODEL) \
        == tmp_path / "existing" / engine.OPENVINO_MODEL
    for name, source in ((engine.OPENVINO_MODEL, other_model), (engine.INT8_MODEL, export / engine.OPENVINO_MODEL)):
        for suffix in (".xml", ".bin"):
            copy = (tmp_path / "existing" / name).with_suffix(suffix)
            assert copy.read_bytes() == source.with_suffix(suffix).read_bytes()
    assert sorted(path.name for path in (tmp_path / "existing").iterdir()) == [
        "model-int8.bin", "model-int8.xml", "model.bin", "model.xml", engine.REFERENCE_FILE]
    assert engine.exported_engines(tmp_path / "existing") == ["openvino-int8", "openvino"]
    assert str(np.load(tmp_path / "existing" / engine.REFERENCE_FILE)["weights"]) == ""


@needs_openvino
def test_no_export_without_its_reference(export, tmp_path):
    assert engine.exported_engines(None) == [] and engine.exported_engines("") == []
    assert engine.exported_engines(tmp_path) == []
    (tmp_path / engine.OPENVINO_MODEL).write_bytes((export / engine.OPENVINO_MODEL).read_bytes())
    assert engine.exported_engines(tmp_path) == []


@needs_openvino
def test_an_engine_is_built_from_the_export_before_converting(network, other_model, pixels, expected, tmp_path,
                                                              monkeypatch):
    for name, file in engine.EXPORTED_FILES.items():
        engine.copy_model(other_model, tmp_path, file)
    other = engine.eager_logits(other_network(), pixels)
    # threads: 1 for the forward, each at_threads its own (None would be OpenVINO's default, as many as the cores:
    # 1 and 2 cannot both match it)
    at_threads = lambda built: [built.at_threads(n).compiled.get_property("INFERENCE_NUM_THREADS")  # noqa: E731
                                for n in (1, 2)]
    converted = engine.build("openvino", network, SIZE, 1)
    assert converted.name == "openvino" and engine.difference(converted.forward(pixels), expected)[0] < 1e-5
    assert converted.forward.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert at_threads(converted) == [1, 2]
    monkeypatch.setattr(engine, "convert_openvino", pytest.fail)
    for name in ("openvino", "openvino-int8"):
        built = engine.build(name, network, SIZE, 1, exported=tmp_path, int8_model=tmp_path / "missing.xml")
        assert built.name == name and engine.difference(built.forward(pixels), other)[0] < 1e-5
        assert built.forward.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert at_threads(built) == [1, 2]
    int8 = engine.build("openvino-int8", network, SIZE, 1, exported=tmp_path / "empty", int8_model=str(other_model))
    assert int8.name == "openvino-int8" and engine.difference(int8.forward(pixels), other)[0] < 1e-5
    assert int8.forward.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert at_threads(int8) == [1, 2]
    for name, int8_model in (("torch", other_model), ("openvino-int8", None)):
        with pytest.raises(ValueError, match=f"^no engine '{name}'$"):
            engine.build(name, network, SIZE, 1, int8_model=int8_model)


# ----------------------------------------------------------------------------------- the check
def load_time(message):
    seconds = float(re.search(r"; (\d+\.\d) s to load\)$", message).group(1))
    assert 0 <= seconds < 600
    return message


@needs_openvino
def test_an_engine_that_matches_eager_is_served_and_says_so(network, pixels, expected, caplog):
    caplog.set_level(logging.INFO, logger=engine.__name__)
    served_by = engine.checked("openvino", network, SIZE, 1, TOLERANCE)
    assert served_by.name == "openvino" and engine.difference(served_by.forward(pixels), expected)[0] < 1e-5
    assert served_by.forward.compiled.get_property("INFERENCE_NUM_THREADS") == 1  # the threads asked for
    [message] = messages(caplog, logging.INFO)
    assert re.fullmatch(r"The openvino engine matches eager PyTorch on the load-time check \(largest logit "
                        r"difference \S+ of the largest logit, tolerance 1e-02; top-1 agrees; \d+\.\d s to load\)",
                        load_time(message)), message


@needs_openvino
def test_an_engine_built_from_other_weights_is_refused_and_says_why(network, other_model, tmp_path, caplog):
    engine.copy_model(other_model, tmp_path, engine.OPENVINO_MODEL)
    assert engine.checked("openvino", network, SIZE, 1, TOLERANCE, exported=tmp_path) is None
    [message] = messages(caplog)
    assert re.fullmatch(r"The openvino engine's answers differ from eager PyTorch on the load-time check \(largest "
                        r"logit difference \S+ of the largest logit, tolerance 1e-02; top-1 \w+\): not serving with "
                        r"it", message), message


@needs_openvino
def test_an_engine_that_fails_to_build_is_refused_and_says_why(network, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(engine, "convert_openvino", broken)
    assert engine.checked("openvino", network, SIZE, 1, TOLERANCE) is None
    assert messages(caplog) == ["The openvino engine failed to load (RuntimeError: conversion failed)"]


@needs_openvino
def test_an_int8_engine_is_checked_by_top1_agreement_alone(network, int8_model, caplog):
    caplog.set_level(logging.INFO, logger=engine.__name__)
    served_by = engine.checked("openvino-int8", network, SIZE, 1, TOLERANCE, int8_model=int8_model)
    assert served_by.name == "openvino-int8"
    [message] = messages(caplog, logging.INFO)
    assert load_time(message).startswith("The openvino-int8 engine matches eager PyTorch on the load-time check "
                                         "(top-1 agreement with eager fp32 100%, at least 75% needed; ")
    # the same model as an fp32 engine: refused (its logits are twice eager's)
    assert engine.checked("openvino", network, SIZE, 1, TOLERANCE, exported=int8_model.parent) is None


# ------------------------------------------------------------------------- a worker without torch
@needs_openvino
@pytest.mark.parametrize("name", ["openvino", "openvino-int8"])
def test_a_lean_worker_serves_serve_s_export_after_checking_it(name, export, int8_model, tmp_path, pixels, expected,
                                                              caplog):
    folder = tmp_path  # serve's export, with an int8 model
    (folder / engine.REFERENCE_FILE).write_bytes((export / engine.REFERENCE_FILE).read_bytes())
    engine.copy_model(export / engine.OPENVINO_MODEL, folder, engine.OPENVINO_MODEL)
    engine.copy_model(int8_model, folder, engine.INT8_MODEL)
    caplog.set_level(logging.INFO, logger=engine.__name__)
    served_by = engine.load_export(name, folder, 1, TOLERANCE, "weights-1")
    answers = served_by.forward(pixels)
    assert served_by.name == name and engine.difference(answers, expected * (2 if "int8" in name else 1))[0] < 1e-5
    assert served_by.forward.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert served_by.at_threads(2).compiled.get_property("INFERENCE_NUM_THREADS") == 2
    [message] = messages(caplog, logging.INFO)
    assert load_time(message).startswith(f"The {name} engine matches eager PyTorch on the load-time check (")


@needs_openvino
def test_a_lean_worker_refuses_an_export_of_other_weights(export, caplog):
    assert engine.load_export("openvino", export, 1, TOLERANCE, "weights-2") is None
    assert messages(caplog) == [f"The export in {export} was made from other weights than the artifact's: it would "
                                "differ from eager PyTorch"]


@needs_openvino
def test_a_lean_worker_refuses_an_export_whose_model_differs_from_its_reference(export, other_model, tmp_path,
                                                                               caplog):
    (tmp_path / engine.REFERENCE_FILE).write_bytes((export / engine.REFERENCE_FILE).read_bytes())
    engine.copy_model(other_model, tmp_path, engine.OPENVINO_MODEL)
    assert engine.load_export("openvino", tmp_path, 1, TOLERANCE, "weights-1") is None
    [message] = messages(caplog)
    assert message.startswith("The openvino engine's answers differ from eager PyTorch on the load-time check "
                              "(largest logit difference ")


@needs_openvino
def test_a_lean_worker_refuses_an_export_it_cannot_load(export, caplog):
    assert engine.load_export("openvino-int8", export, 1, TOLERANCE, "weights-1") is None  # no int8 model there
    [message] = messages(caplog)
    assert message.startswith(f"The openvino-int8 engine failed to load from {export} (RuntimeError: "), message
    assert str(export / engine.INT8_MODEL) in message  # OpenVINO's reason: the file it could not open


# ------------------------------------------------------------------------------ the fallbacks
@needs_openvino
def test_each_engine_asked_for_is_served_when_it_passes(network, int8_model, pixels, expected, caplog):
    for requested, int8, name in (("openvino", None, "openvino"), ("auto", None, "openvino"),
                                  ("auto", int8_model, "openvino-int8"),
                                  ("openvino-int8", int8_model, "openvino-int8")):
        served_by, serving = engine.load(requested, network, SIZE, "cpu", 1, TOLERANCE, int8_model=int8)
        assert (served_by.name, serving) == (name, network)
        assert served_by.forward.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert engine.difference(served_by.forward(pixels), expected * (2 if int8 else 1))[0] < 1e-5
    assert messages(caplog) == []


@needs_openvino
def test_a_failing_int8_engine_falls_back_to_openvino_then_torch(network, other_model, tmp_path, pixels, expected,
                                                                 caplog):
    served_by, serving = engine.load("auto", network, SIZE, "cpu", 1, TOLERANCE, int8_model=other_model)
    assert (served_by.name, serving) == ("openvino", network)
    assert messages(caplog)[-1] == "The engine did not pass its check: serving with openvino instead"
    caplog.clear()
    engine.copy_model(other_model, tmp_path, engine.OPENVINO_MODEL)
    served_by, serving = engine.load("openvino-int8", network, SIZE, "cpu", 1, TOLERANCE, exported=tmp_path,
                                     int8_model=other_model)
    assert served_by.name == "torch" and serving is not network  # the optimised torch model, checked
    assert np.allclose(served_by.forward(pixels), expected, atol=1e-5)
    assert messages(caplog)[1::2] == ["The engine did not pass its check: serving with openvino instead",
                                      "The engine did not pass its check: serving with torch instead"]
