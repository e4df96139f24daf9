"""The transformer on an MMS batch, in-process with MMS's own Context: one answer or error per request, each read
with its own headers."""
import json

import pytest
from mms.context import Context, RequestProcessor

import serving_samples as samples
from conftest import untrained_artifact
from image_classifier.serving import handler, handler_service, settings

CLASSES = ["Red fox", "Green frog", "Blue whale", "Grey seal"]
TOP_K = "X-Amzn-SageMaker-Custom-Attributes"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return untrained_artifact(tmp_path_factory.mktemp("model"), CLASSES)


@pytest.fixture(scope="module")
def service(model_dir):
    service = handler_service.HandlerService()
    context = Context("model", str(model_dir), None, 1, None, "1.1.11")
    context.request_processor = [RequestProcessor({})]
    service.initialize(context)
    return service


def handle_batch(service, model_dir, requests):
    context = Context("model", str(model_dir), None, len(requests), None, "1.1.11")
    context.request_processor = [RequestProcessor(headers) for _, headers in requests]
    bodies = service.handle([{"body": body} for body, _ in requests], context)
    return [(p.get_response_status_code(), p.get_response_headers(), body)
            for p, body in zip(context.request_processor, bodies)]


def test_a_mixed_batch_gets_one_answer_per_request(service, model_dir):
    requests = [
        (samples.png(), {"Content-Type": "image/png", "Accept": "text/csv"}),  # 406, first: its headers must not leak
        (samples.png(), {"Content-Type": "image/png", TOP_K: "top_k=1"}),
        (samples.random_bytes(), {"Content-Type": "image/jpeg"}),  # 400
        (samples.batch_json(samples.jpeg((30, 20)), samples.grey_jpeg()).encode(),
         {"Content-Type": "application/json", TOP_K: "top_k=2"}),
        (samples.png(), {"Content-Type": "text/csv"}),  # 415
        (samples.jpeg((40, 30)), {"Content-Type": "image/jpeg"}),  # default top_k 5 -> the 4 classes
    ]
    results = handle_batch(service, model_dir, requests)
    assert [status for status, _, _ in results] == [406, 200, 400, 200, 415, 200]
    assert all(headers["content-type"] == settings.JSON for _, headers, _ in results)
    assert [[len(row) for row in json.loads(body)["predictions"]] for status, _, body in results if status == 200] \
        == [[1], [2, 2], [4]]
    for (body, headers), (status, response_headers, response) in zip(requests, results):
        if status != 200:
            assert set(json.loads(response)) == {"error", "message"}
            continue
        alone = handle_batch(service, model_dir, [(body, headers)])[0]
        assert_same_answer(json.loads(response), json.loads(alone[2]))
        assert response_headers[settings.ENGINE_HEADER] == alone[1][settings.ENGINE_HEADER]


def assert_same_answer(got, expected):
    """The same labels in the same order, the probabilities within 1e-4 (batched forward passes may round
    differently)."""
    assert [[p["label"] for p in row] for row in got["predictions"]] == \
        [[p["label"] for p in row] for row in expected["predictions"]]
    for row, expected_row in zip(got["predictions"], expected["predictions"]):
        assert [p["probability"] for p in row] == pytest.approx([p["probability"] for p in expected_row], abs=1e-4)


def test_a_fault_in_the_shared_forward_pass_is_a_500_for_each_accepted_request(service, model_dir, monkeypatch):
    def broken(inputs, model):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(handler, "forward", broken)
    results = handle_batch(service, model_dir, [(samples.png(), {"Content-Type": "image/png"}),
                                                (samples.png(), {"Content-Type": "text/csv"})])
    assert [status for status, _, _ in results] == [500, 415]
    assert "secret" not in results[0][2]
