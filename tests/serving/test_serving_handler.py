"""Unit tests of the inference functions, and of the toolkit workflow they run in, without a server."""
import dataclasses
import json
import time
from fractions import Fraction
from http import HTTPStatus

import numpy as np
import pytest
import torch
from mms.context import Context, RequestProcessor
from mms.model_loader import ModelLoader

import serving_samples as samples
from conftest import untrained_artifact
from image_classifier import contract
from image_classifier.images import read_header
from image_classifier.model import ArtifactError
from image_classifier.serving import handler, handler_service, settings

CLASSES = ["Red fox", "Green frog", "Blue whale"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
        return untrained_artifact(tmp_path_factory.mktemp("model"), CLASSES)


@pytest.fixture(scope="module")
def model(model_dir):
    return handler.model_fn(str(model_dir))


def mms_context(model_dir, headers):
    """The context MMS gives the handler for one request (its real classes)."""
    context = Context("model", str(model_dir), None, 1, None, "1.1.11")
    context.request_processor = [RequestProcessor(headers)]
    return context


# --------------------------------------------------------------------------------- headers
@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/x-image", "application/json",
                                          "Image/PNG", "application/json; charset=utf-8"])
def test_supported_content_types(content_type):
    assert handler.check_content_type(content_type) in settings.ACCEPTED_CONTENT_TYPES


@pytest.mark.parametrize("content_type", [None, "", "text/csv", "application/x-npy", "image/svg+xml"])
def test_unsupported_content_type_is_415(content_type):
    with pytest.raises(handler.UnsupportedContentType) as error:
        handler.check_content_type(content_type)
    assert error.value.status_code == 415 and "application/json" in error.value.message


@pytest.mark.parametrize("accept", [None, "application/json", "*/*", "application/*",
                                    "text/html, application/json;q=0.9"])
def test_acceptable_accept(accept):
    handler.check_accept(accept)


@pytest.mark.parametrize("accept", ["text/csv", "application/x-npy", "text/html, image/png"])
def test_unacceptable_accept_is_406(accept):
    with pytest.raises(handler.NotAcceptable) as error:
        handler.check_accept(accept)
    assert error.value.status_code == 406


@pytest.mark.parametrize("attributes, expected", [(None, 5), ("", 5), ("top_k=3", 3), ("a=b, top_k=2", 2),
                                                  ("trace=1;top_k=7", 7), ("TOP_K = 4", 4)])
def test_parse_top_k(attributes, expected):
    assert handler.parse_top_k(attributes) == expected


@pytest.mark.parametrize("attributes", ["top_k=0", "top_k=-2", "top_k=three", "top_k="])
def test_bad_top_k_is_400(attributes):
    with pytest.raises(handler.BadRequest, match="top_k"):
        handler.parse_top_k(attributes)


# ------------------------------------------------------------------------------------ model_fn
def test_model_fn_loads_the_artifact_in_eval_mode(model):
    assert model.classes == CLASSES
    assert not model.network.training
    assert model.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert model.decode_side == 18  # 16 px / (224 / 256)
    assert tuple(model.transform(samples.rgb_image((40, 30))).shape) == (3, 16, 16)


def test_model_fn_applies_the_thread_setting(model_dir, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(settings.TORCH_THREADS_ENV, "1")
    try:
        handler.model_fn(str(model_dir))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_model_fn_refuses_a_broken_artifact(model_dir, tmp_path):
    (tmp_path / "model.json").write_text((model_dir / "model.json").read_text())
    (tmp_path / "model.pth").write_bytes(b"not a state dict")
    with pytest.raises(ArtifactError, match="Cannot load the model"):
        handler.model_fn(str(tmp_path))


def test_the_optimised_model_gives_the_plain_model_s_answers(model_dir, monkeypatch):
    monkeypatch.setenv(settings.ENGINE_ENV, "torch")
    model = handler.model_fn(str(model_dir))
    monkeypatch.setenv(settings.OPTIMIZE_ENV, "false")
    plain = handler.model_fn(str(model_dir))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.network.modules())  # folded
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.network.modules())
    request = handler.input_fn(samples.batch_json(*(samples.jpeg((30 + i, 20)) for i in range(4))),
                               "application/json")
    optimised = handler.predict_fn(request, model).probabilities
    assert np.allclose(optimised, handler.predict_fn(request, plain).probabilities, atol=1e-4)


# ------------------------------------------------------------------------------------ input_fn
@pytest.mark.parametrize("name", sorted(samples.GOOD_PICTURES))
def test_every_picture_mode_becomes_an_rgb_tensor(model, name):
    content_type, make = samples.GOOD_PICTURES[name]
    request = handler.input_fn(make(), content_type)
    assert len(request.pictures) == 1 and request.top_k == contract.DEFAULT_TOP_K
    assert tuple(handler.to_tensor(request.pictures[0], model).shape) == (3, 16, 16)


def test_input_fn_reads_a_json_batch_as_text_or_bytes():
    body = samples.batch_json(samples.png(), samples.jpeg(), samples.cmyk_jpeg())
    assert len(handler.input_fn(body, "application/json").pictures) == 3
    assert len(handler.input_fn(body.encode(), "application/json; charset=utf-8").pictures) == 3


def test_input_fn_reads_top_k_from_the_custom_attributes_header(model_dir):
    context = mms_context(model_dir, {"x-amzn-sagemaker-custom-attributes": "top_k=2"})
    assert handler.input_fn(samples.png(), "image/png", context).top_k == 2


def test_without_top_k_in_the_request_the_endpoint_s_setting_holds(model_dir, monkeypatch):
    monkeypatch.setenv(settings.TOP_K_ENV, "3")
    assert handler.input_fn(samples.png(), "image/png").top_k == 3
    context = mms_context(model_dir, {"x-amzn-sagemaker-custom-attributes": "top_k=2"})
    assert handler.input_fn(samples.png(), "image/png", context).top_k == 2  # the request's own wins


@pytest.mark.parametrize("body, content_type, error, words", [
    (b"", "image/jpeg", handler.BadRequest, "empty"),
    (None, "image/png", handler.BadRequest, "empty"),
    (samples.random_bytes(), "image/jpeg", handler.BadRequest, "supported format"),
    (samples.bomb_png(), "image/png", handler.PayloadTooLarge, "too large"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "application/x-image", handler.BadRequest,
     "supported format"),
    (samples.ico(), "application/x-image", handler.BadRequest, "supported format"),
    (samples.png(), "text/csv", handler.UnsupportedContentType, "not supported"),
    ("{not json", "application/json", handler.BadRequest, "not valid JSON"),
    ('{"instances": ' + "9" * 5000 + "}", "application/json", handler.BadRequest, "not valid JSON"),
    ("", "application/json", handler.BadRequest, "empty"),
    (samples.nested_json(), "application/json", handler.BadRequest, "nested too deeply"),
    ('{"instances": ' + samples.nested_json(500) + "}", "application/json", handler.BadRequest, "instances[0]"),
    ('{"pictures": []}', "application/json", handler.BadRequest, "instances"),
    ('[{"b64": "aGVsbG8="}]', "application/json", handler.BadRequest, "instances"),
    ('"instances"', "application/json", handler.BadRequest, "instances"),
    ('{"instances": {"b64": "aGVsbG8="}}', "application/json", handler.BadRequest, "instances"),
    ('{"instances": []}', "application/json", handler.BadRequest, "at least one"),
    ('{"instances": ["abc"]}', "application/json", handler.BadRequest, "instances[0]"),
    ('{"instances": [null]}', "application/json", handler.BadRequest, "instances[0]"),
    ('{"instances": [{"b64": 5}]}', "application/json", handler.BadRequest, "got int"),
    ('{"instances": [{"b64": ["aGVsbG8="]}]}', "application/json", handler.BadRequest, "got list"),
    ('{"instances": [{"b64": "@@not base64@@"}]}', "application/json", handler.BadRequest, "base64"),
    ('{"instances": [{"b64": "aGVsbG8="}]}', "application/json", handler.BadRequest, "instances[0]"),
    (b"\xff\xd8\xff\xe0 binary", "application/json; charset=utf-8", handler.BadRequest, "UTF-8"),
], ids=["empty", "none", "random-bytes", "decompression-bomb", "eps", "ico", "wrong-type", "bad-json", "huge-number",
        "empty-json", "deep-json", "nested-instances", "no-instances", "top-level-list", "top-level-string",
        "instances-object", "no-instance", "string-instance", "null-instance", "int-b64", "list-b64",
        "bad-base64", "not-a-picture", "binary-json"])
def test_input_fn_refuses_bad_input(body, content_type, error, words):
    with pytest.raises(error) as raised:
        handler.input_fn(body, content_type)
    assert words in raised.value.message
    assert "Traceback" not in raised.value.message


def test_input_fn_caps_the_batch_size(monkeypatch):
    monkeypatch.setenv(settings.MAX_BATCH_ENV, "2")
    with pytest.raises(handler.PayloadTooLarge, match="at most 2"):
        handler.input_fn(samples.batch_json(*[samples.png()] * 3), "application/json")


def test_input_fn_caps_the_pixels_of_one_picture(monkeypatch):
    monkeypatch.setenv(settings.MAX_PIXELS_ENV, "1000")
    with pytest.raises(handler.PayloadTooLarge, match="40x30 pixels, more than 1,000"):
        handler.input_fn(samples.png((40, 30)), "image/png")


# ---------------------------------------------------------------------------------- predict_fn
def predict(model, body, content_type="application/json"):
    return handler.predict_fn(handler.input_fn(body, content_type), model)


def test_predict_fn_gives_probabilities_per_picture(model):
    prediction = predict(model, samples.batch_json(*(samples.jpeg((24 + i, 24)) for i in range(3))))
    assert prediction.probabilities.shape == (3, len(CLASSES))
    assert np.allclose(prediction.probabilities.sum(axis=1), np.ones(3), atol=1e-5)
    assert prediction.top_k == 5 and prediction.classes == CLASSES


def test_predict_fn_batches_give_the_same_answers(model, monkeypatch):
    pictures = [samples.encode(samples.rgb_image(seed=i), "PNG") for i in range(5)]
    together = predict(model, samples.batch_json(*pictures)).probabilities
    monkeypatch.setattr(model, "settings", dataclasses.replace(model.settings, forward_batch=2))
    chunked = predict(model, samples.batch_json(*pictures)).probabilities
    one = predict(model, pictures[3], "image/png").probabilities
    assert np.allclose(together, chunked, atol=1e-5) and np.allclose(together[3:4], one, atol=1e-5)


def test_a_pixel_bomb_batch_is_refused_by_the_budget_before_any_decoding(model):
    """The attack of issue 12: dozens of 2 KB lossless WebPs, each 49 MP decoded (~200 MB apiece)."""
    body = samples.batch_json(*[samples.pixel_bomb_webp()] * 30)
    assert len(body) < 200_000
    started = time.process_time()
    with pytest.raises(handler.PayloadTooLarge) as raised:
        predict(model, body)
    assert "1,470,000,000 pixels" in raised.value.message and "100,000,000" in raised.value.message
    assert settings.PIXEL_BUDGET_ENV in raised.value.message
    assert time.process_time() - started < 5  # headers only: well under a second on any machine


def test_a_big_picture_within_the_budget_is_answered_without_a_full_size_copy(model):
    """One 49 MP picture is under both caps: decoded, reduced at once, answered."""
    assert predict(model, samples.pixel_bomb_webp(), "application/x-image").probabilities.shape == (1, len(CLASSES))
    # A 12 MP JPEG is decoded at 1/8 scale, but charged at 12 MP: every scan is read at full size.
    header = read_header(samples.big_jpeg(), min_side=model.decode_side)
    assert header.size == (4000, 3000) and header.decoded_size == (500, 375)


def test_a_jpeg_is_charged_at_its_declared_size_not_its_draft_size(model, monkeypatch):
    monkeypatch.setattr(model, "settings", dataclasses.replace(model.settings, pixel_budget=12_000_000))
    predict(model, samples.big_jpeg(), "image/jpeg")
    monkeypatch.setattr(model, "settings", dataclasses.replace(model.settings, pixel_budget=11_999_999))
    with pytest.raises(handler.PayloadTooLarge, match="12,000,000 pixels, more than the budget of 11,999,999"):
        predict(model, samples.big_jpeg(), "image/jpeg")


def test_upsampled_pixels_are_charged(model, monkeypatch):
    """A tiny picture is resized up to the model's input (decode_side 18 here): it costs that much."""
    monkeypatch.setattr(model, "settings", dataclasses.replace(model.settings, pixel_budget=2 * 18 * 18))
    predict(model, samples.batch_json(samples.png((1, 1)), samples.png((2, 2))))
    with pytest.raises(handler.PayloadTooLarge, match="972 pixels, more than the budget of 648"):
        predict(model, samples.batch_json(*[samples.png((1, 1))] * 3))
    # A 1x50000 picture (a few hundred bytes) would become 18x900000 (256x12.8M at 224 px): refused alone.
    monkeypatch.setattr(model, "settings", dataclasses.replace(model.settings, max_pixels=10_000_000))
    with pytest.raises(handler.PayloadTooLarge, match="1x50000 pixels are resized to 16,200,000"):
        predict(model, samples.thin_png(), "image/png")


def test_the_scan_bomb_is_a_413_from_its_header(model):
    bomb = samples.scan_bomb_jpeg()
    started = time.perf_counter()
    with pytest.raises(handler.PayloadTooLarge, match="more than 32 scans"):
        predict(model, bomb, "image/jpeg")
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize("name", sorted(samples.HOSTILE_CONTAINERS))
def test_a_hostile_container_is_a_413_from_its_bytes(name):
    """Issue 31: floods of segments, chunks or blocks are refused by check_picture, before any decoding."""
    make, words = samples.HOSTILE_CONTAINERS[name]
    started = time.perf_counter()
    with pytest.raises(handler.PayloadTooLarge) as raised:
        handler.check_picture(make())
    assert raised.value.status_code == 413 and words in raised.value.message
    assert raised.value.message.startswith("The body is too large: the ")
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize("name", sorted(samples.CAMERA_PICTURES))
def test_pictures_as_cameras_and_phones_write_them_are_served(model, name):
    assert predict(model, samples.CAMERA_PICTURES[name](), "application/x-image").probabilities.shape == (1, len(CLASSES))


@pytest.mark.parametrize("per_picture, expected", [(0.001, 32), (1.0, 15), (4.0, 3), (100.0, 1)])
def test_the_batch_limit_keeps_a_full_batch_within_the_batch_seconds(model, per_picture, expected):
    served = dataclasses.replace(model.settings, max_batch=None, batch_seconds=15)
    limit, why = handler.batch_limit(served, per_picture)
    assert limit == expected and settings.BATCH_SECONDS_ENV in why
    assert handler.batch_limit(dataclasses.replace(served, max_batch=50), per_picture)[0] == 50  # the setting wins


def test_model_fn_derives_the_batch_limit_from_a_timed_forward_pass(model_dir, monkeypatch, caplog):
    caplog.set_level("INFO")
    monkeypatch.setattr(handler, "seconds_per_picture", lambda forward, example: 2.5)
    assert handler.model_fn(str(model_dir)).max_batch == 6  # 15 s / 2.5 s
    assert "Batch limit: 6 picture(s) per request (a forward pass takes 2500 ms per picture" in caplog.text
    monkeypatch.setenv(settings.MAX_BATCH_ENV, "9")
    assert handler.model_fn(str(model_dir)).max_batch == 9
    monkeypatch.undo()
    per_picture = handler.seconds_per_picture(lambda x: x * 2, torch.zeros(1, 3, 16, 16))
    assert 0 < per_picture < 1


def test_the_budget_counts_all_pictures_of_a_request(model, monkeypatch):
    monkeypatch.setattr(model, "settings", dataclasses.replace(model.settings, pixel_budget=2 * 40 * 30))
    predict(model, samples.batch_json(samples.png((40, 30)), samples.png((40, 30))))
    with pytest.raises(handler.PayloadTooLarge, match="3,600 pixels, more than the budget of 2,400"):
        predict(model, samples.batch_json(*[samples.png((40, 30))] * 3))


def test_a_picture_that_fails_to_decode_is_a_400_naming_it(model):
    body = samples.batch_json(samples.png(), samples.truncated_jpeg())
    with pytest.raises(handler.BadRequest, match=r"instances\[1\] is not a readable picture"):
        predict(model, body)


# ----------------------------------------------------------------------------------- output_fn
def test_output_fn_writes_sorted_top_k_labels():
    probabilities = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    body, content_type = handler.output_fn(handler.Prediction(probabilities, CLASSES, 2), "application/json")
    assert content_type == "application/json"
    first, second = json.loads(body)["predictions"]
    assert first == [{"label": "Green frog", "index": 1, "probability": pytest.approx(0.7)},
                     {"label": "Blue whale", "index": 2, "probability": pytest.approx(0.2)}]
    assert [item["index"] for item in second] == [0, 2]


def test_output_fn_clamps_top_k_to_the_classes():
    body, _ = handler.output_fn(handler.Prediction(torch.tensor([[0.2, 0.3, 0.5]]), CLASSES, 50), None)
    assert len(json.loads(body)["predictions"][0]) == len(CLASSES)


def test_output_fn_refuses_a_non_json_accept():
    with pytest.raises(handler.NotAcceptable):
        handler.output_fn(handler.Prediction(torch.tensor([[1.0, 0, 0]]), CLASSES, 1), "text/csv")


# ------------------------------------------------------------ the toolkit workflow (transformer)
def test_handler_service_defines_exactly_one_class():
    assert [cls.__name__ for cls in ModelLoader.list_model_services(handler_service)] == ["HandlerService"]


@pytest.fixture(scope="module")
def service(model_dir):
    service = handler_service.HandlerService()
    service.initialize(mms_context(model_dir, {}))
    return service


def handle(service, model_dir, body, headers):
    context = mms_context(model_dir, headers)
    response = service.handle([{"body": body}], context)
    processor = context.request_processor[0]
    return processor.get_response_status_code(), processor.get_response_header("content-type"), response[0]


def test_transformer_answers_a_good_request(service, model_dir):
    status, content_type, body = handle(service, model_dir, samples.png(),
                                        {"Content-Type": "image/png", "X-Amzn-SageMaker-Custom-Attributes": "top_k=1"})
    assert (status, content_type) == (200, "application/json")
    assert len(json.loads(body)["predictions"][0]) == 1


@pytest.mark.parametrize("body, headers, status", [
    (samples.random_bytes(), {"Content-Type": "image/jpeg"}, 400),
    (samples.png(), {"Content-Type": "text/csv"}, 415),  # binary text/csv: refused before UTF-8 decoding
    (b"\xff\xfe\x00binary", {"Content-Type": "application/json"}, 400),
    (samples.png(), {"Content-Type": "image/png", "Accept": "text/csv"}, 406),
    (samples.bomb_png(), {"Content-Type": "image/png"}, 413),
    (samples.batch_json(*[samples.pixel_bomb_webp()] * 30).encode(), {"Content-Type": "application/json"}, 413),
    (samples.nested_json().encode(), {"Content-Type": "application/json"}, 400),
    (samples.truncated_jpeg(), {"Content-Type": "image/jpeg"}, 400),
], ids=["random-bytes", "binary-csv", "binary-json", "bad-accept", "bomb", "pixel-budget", "deep-json",
        "truncated"])
def test_transformer_answers_client_mistakes_with_json(service, model_dir, body, headers, status):
    code, content_type, response = handle(service, model_dir, body, headers)
    assert (code, content_type) == (status, "application/json")
    message = json.loads(response)
    assert set(message) == {"error", "message"} and "Traceback" not in response


def test_transformer_hides_server_faults(service, model_dir, monkeypatch):
    def broken(inputs, model):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(handler, "forward", broken)
    context = mms_context(model_dir, {"Content-Type": "image/png"})
    [response] = service.handle([{"body": samples.png()}], context)
    processor = context.request_processor[0]
    assert processor.get_response_status_code() == 500
    assert processor.get_response_status_phrase() == "Internal Server Error"  # not the exception's text
    assert "secret" not in response and "Traceback" not in response and json.loads(response)["message"]


def test_transformer_applies_the_model_s_batch_limit(service, model_dir, monkeypatch):
    monkeypatch.setattr(service._service._model, "max_batch", 2)
    code, _, response = handle(service, model_dir, samples.batch_json(*[samples.png()] * 3).encode(),
                               {"Content-Type": "application/json"})
    assert code == 413 and "3 pictures in one request; at most 2" in json.loads(response)["message"]
    assert handle(service, model_dir, samples.batch_json(*[samples.png()] * 2).encode(),
                  {"Content-Type": "application/json"})[0] == 200


def test_transformer_refuses_a_body_over_the_payload_cap(service, model_dir, monkeypatch):
    monkeypatch.setenv(contract.PAYLOAD_CAP_ENV, "1")
    body = samples.random_bytes(1024 * 1024 + 1)
    code, content_type, response = handle(service, model_dir, body, {"Content-Type": "image/jpeg"})
    assert (code, content_type) == (413, "application/json")
    assert "1,048,577 bytes, more than the payload cap of 1,048,576" in json.loads(response)["message"]


# ------------------------------------------------------------------------- what the client is told
FORMATS = ", ".join(settings.PICTURE_FORMATS)
BATCH_FORM = '{"instances": [{"b64": "..."}]}'


@pytest.mark.parametrize("content_type, named", [(None, "(none)"), ("", "(none)"), ("text/csv", "text/csv")])
def test_an_unsupported_content_type_is_told_what_to_send(content_type, named):
    with pytest.raises(handler.UnsupportedContentType) as error:
        handler.check_content_type(content_type)
    assert error.value.message == (f"Content type {named} is not supported: send one picture as image/jpeg, "
                                   f"image/png, application/x-image, or a batch as application/json {BATCH_FORM}.")


@pytest.mark.parametrize("content_type", ["image/png; a=b; c=d", "image/png;charset=x"])
def test_a_content_type_s_parameters_are_ignored(content_type):
    assert handler.check_content_type(content_type) == "image/png"


def test_an_accept_list_without_spaces_is_read_item_by_item():
    handler.check_accept("text/csv,application/json")
    with pytest.raises(handler.NotAcceptable) as error:
        handler.check_accept("text/csv,image/png")
    assert error.value.message == "Accept text/csv,image/png is not supported: responses are application/json."


def test_request_headers_are_found_by_any_spelling(model_dir):
    context = mms_context(model_dir, {"X-Other": "no", "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"})
    assert handler.header(context, "x-amzn-sagemaker-custom-attributes") == "top_k=2"
    assert handler.header(context, "X-OTHER") == "no" and handler.header(context, "Accept") is None
    unprocessed = Context("model", str(model_dir), None, 1, None, "1.1.11")
    assert [handler.header(found, "X-Other") for found in (None, object(), unprocessed)] == [None, None, None]


@pytest.mark.parametrize("attributes, expected", [("top_k=1", 1), ("top-k=3", 3), ("a=b=c,top_k=2", 2)])
def test_top_k_s_smallest_value_and_spellings(attributes, expected):
    assert handler.parse_top_k(attributes) == expected


@pytest.mark.parametrize("attributes, message", [
    ("top_k=0", "top_k must be at least 1, got 0."), ("top_k=three", "top_k must be a whole number, got 'three'."),
    ("top_k=3=4", "top_k must be a whole number, got '3=4'.")])
def test_a_bad_top_k_is_told_what_is_wrong(attributes, message):
    with pytest.raises(handler.BadRequest) as error:
        handler.parse_top_k(attributes)
    assert error.value.message == message


@pytest.mark.parametrize("body, content_type, error, message", [
    (b"", "image/png", handler.BadRequest, "The body is empty: send the bytes of a picture."),
    (samples.random_bytes(), "image/jpeg", handler.BadRequest,
     f"The body is not a picture in a supported format ({FORMATS})."),
    (samples.batch_json(samples.png(), samples.random_bytes()), "application/json", handler.BadRequest,
     f"instances[1] is not a picture in a supported format ({FORMATS})."),
    (b"\xff\xfe binary", "application/json", handler.BadRequest, "The JSON body is not UTF-8 text."),
    (" \n", "application/json", handler.BadRequest, f"The body is empty: send {BATCH_FORM}."),
    ("{not json", "application/json", handler.BadRequest,
     "The body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)."),
    (samples.nested_json(), "application/json", handler.BadRequest,
     f"The JSON body is nested too deeply: send {BATCH_FORM}."),
    ('{"instances": {"b64": "aGVsbG8="}}', "application/json", handler.BadRequest,
     'The JSON body must be {"instances": [{"b64": "<base64 picture>"}, ...]} with at least one instance.'),
    ('{"instances": ["abc"]}', "application/json", handler.BadRequest,
     'instances[0] must be an object {"b64": "<base64 picture>"}, got str.'),
    ('{"instances": [{"b64": "aGVs@bG8="}]}', "application/json", handler.BadRequest,
     "instances[0].b64 is not valid base64."),  # decodable when the stray character is dropped: still refused
], ids=["empty", "random-bytes", "random-instance", "binary-json", "blank-json", "bad-json", "deep-json",
        "instances-object", "string-instance", "stray-base64"])
def test_a_refused_request_is_told_exactly_what_is_wrong(body, content_type, error, message):
    with pytest.raises(error) as raised:
        handler.input_fn(body, content_type)
    assert raised.value.message == message


def test_the_pixel_cap_holds_for_every_picture_of_a_batch(monkeypatch):
    monkeypatch.setenv(settings.MAX_PIXELS_ENV, "1000")
    with pytest.raises(handler.PayloadTooLarge) as raised:
        handler.input_fn(samples.batch_json(samples.png((20, 20)), samples.png((40, 30))), "application/json")
    assert raised.value.message == "instances[1] is too large: picture is 40x30 pixels, more than 1,000."


def test_a_picture_at_the_cap_after_resizing_is_served(model, monkeypatch):
    """40x30 is decoded at 40x30 (short side 30 >= 18): 1,200 pixels."""
    monkeypatch.setattr(model, "settings", dataclasses.replace(model.settings, max_pixels=1200))
    predict(model, samples.batch_json(samples.png((40, 30))))
    monkeypatch.setattr(model, "settings", dataclasses.replace(model.settings, max_pixels=1199))
    with pytest.raises(handler.PayloadTooLarge) as raised:
        predict(model, samples.batch_json(samples.png((40, 30))))
    assert raised.value.message == ("instances[0] is too large: 40x30 pixels are resized to 1,200 pixels (a short "
                                    "side of 18), more than 1,199.")


def test_a_big_picture_is_decoded_reduced_no_smaller_than_the_model_needs(model):
    sizes = []
    reduced = dataclasses.replace(model, transform=lambda image: sizes.append(image.size) or model.transform(image))
    picture = handler.check_picture(samples.big_jpeg())
    assert handler.to_tensor(picture, reduced).shape == (3, 16, 16)
    [(width, height)] = sizes
    assert model.decode_side <= min(width, height) < 3000 // 4


def test_a_forward_pass_without_a_chosen_run_uses_the_model_s_own(model):
    inputs = np.zeros((3, 3, 16, 16), np.float32)
    assert np.allclose(handler.forward(inputs, model), handler.forward(inputs, model, model.forward))


def test_probabilities_are_float32_and_exact_for_logits_far_apart():
    probabilities = handler.softmax(np.array([[0.0, 1000.0, 0.0], [-1000.0, -999.0, -1000.0]]))
    assert probabilities.dtype == np.float32 and np.isfinite(probabilities).all()
    second = np.exp([-1.0, 0.0, -1.0]) / np.exp([-1.0, 0.0, -1.0]).sum()
    assert np.allclose(probabilities, [[0.0, 1.0, 0.0], second], atol=1e-6)


def test_top_labels_round_to_six_digits_and_rank_ties_by_index():
    assert handler.top_labels(np.float32([0.1234567, 0.8765433]), ["a", "b"], 2) == [
        {"label": "b", "index": 1, "probability": 0.876543}, {"label": "a", "index": 0, "probability": 0.123457}]
    tied = np.random.default_rng(0).choice(np.float32([0.1, 0.2, 0.3]), 40)  # many ties, past numpy's small sorts
    classes = [f"class {i}" for i in range(40)]
    ranked = [item["index"] for item in handler.top_labels(tied, classes, 40)]
    assert ranked == sorted(range(40), key=lambda i: (-tied[i], i))


def test_ties_as_the_client_sees_them_rank_by_index():
    """Probabilities equal at float32 (what the response shows) but not at float64: still ranked by index."""
    shown = handler.top_labels(np.float64([0.3, 0.30000000001, 0.2]), ["a", "b", "c"], 3)
    assert [(item["index"], item["probability"]) for item in shown] == [(0, 0.3), (1, 0.3), (2, 0.2)]


def test_the_batch_limit_is_the_most_pictures_that_fit_in_the_batch_seconds(model):
    """In exact arithmetic, at times per picture that divide the batch seconds almost exactly too."""
    served = dataclasses.replace(model.settings, max_batch=None, batch_seconds=15)
    for per_picture in [n / 20 for n in range(1, 320)] + [15 / n for n in range(1, 40)]:
        limit, _ = handler.batch_limit(served, per_picture)
        exact = Fraction(per_picture)
        assert 1 <= limit <= settings.DEFAULT_MAX_BATCH
        assert limit * exact <= 15 or limit == 1, per_picture
        assert (limit + 1) * exact > 15 or limit == settings.DEFAULT_MAX_BATCH, per_picture


@pytest.mark.parametrize("error, status", [(handler.BadRequest, 400), (handler.PayloadTooLarge, 413),
                                           (handler.UnsupportedContentType, 415), (handler.NotAcceptable, 406),
                                           (handler.InferenceError, 500)])
def test_each_error_carries_its_status_message_and_phrase(error, status):
    raised = error("what went wrong")
    assert (raised.status_code, raised.message, raised.phrase) == (status, "what went wrong",
                                                                   HTTPStatus(status).phrase)
