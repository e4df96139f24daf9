"""Integration: the real `serve`, with the model also registered with MMS request batching, several clients at
once. Every request of a batch gets its own answer (its own top_k, content type, accept) or its own error;
responses name the engine.

MMS 1.1.11 cannot batch SageMaker's /invocations: it registers the model named on its command line with batch
size 1 (hard-coded), and /invocations without `model_name` reaches only that model. So the batched copy is
registered through the management API under another name and reached at /predictions/<name>, the same
workers, handler and transformer."""
import http.client
import json
import re
import threading
import urllib.parse

import pytest
import torch

import serving_harness as harness
import serving_samples as samples
from image_classifier.model import ModelConfig, build_model, save_artifact
from image_classifier.serving import engine, handler, settings

pytestmark = [harness.require_java(pytest), pytest.mark.slow]
CLASSES = ["Red fox", "Green frog", "Blue whale", "Grey seal"]
# Batches of 4, not 8: MMS 1.1.11's frontend decoder fails on a worker's response that arrives split inside a
# header ("CorruptedFrameException: Message size exceed limit"), kills the worker and answers 500 to the whole
# batch. With batches of 8 that happened in 2 of 2 runs of this file (2026-12-04) and in about 1 of 8 runs of
# the same requests outside pytest; with batches of 4 (smaller responses) in none of 9.
BATCH = 4
BATCHED = "batched"  # the name of the batched registration


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("opt_ml") / "model"
    torch.manual_seed(0)
    save_artifact(folder, build_model("resnet18", len(CLASSES)), ModelConfig("resnet18", CLASSES, 16))
    return folder


@pytest.fixture(scope="module")
def server(model_dir):
    server = harness.Server(model_dir.parent, SAGEMAKER_MODEL_SERVER_WORKERS=1)
    try:
        server.wait_ready(samples.png())
        # A long gathering delay so that the concurrent clients below land in batches of several.
        status, answer = server.management("POST", "/models?" + urllib.parse.urlencode({
            "url": str(model_dir), "model_name": BATCHED, "batch_size": BATCH, "max_batch_delay": 1500,
            "initial_workers": 1, "synchronous": "true"}))
        assert status == 200, answer
        yield server
    finally:
        exit_code, alive = server.stop()
    assert exit_code == 0 and not alive, f"serve exit {exit_code}, left running: {alive}"


def post(port, body, headers, path=f"/predictions/{BATCHED}"):
    """(status, headers, body) of one POST."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=harness.REQUEST_SECONDS)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


TOP_K = "X-Amzn-SageMaker-Custom-Attributes"
GOOD = [  # (body, headers, pictures' top_k)
    (samples.png((24, 24)), {"Content-Type": "image/png", TOP_K: "top_k=1"}, 1),
    (samples.jpeg((40, 30)), {"Content-Type": "image/jpeg", TOP_K: "top_k=2", "Accept": "application/json"}, 2),
    (samples.batch_json(samples.cmyk_jpeg(), samples.exif_rotated_jpeg()), {"Content-Type": "application/json",
                                                                            TOP_K: "a=b;top_k=3"}, 3),
    (samples.grey_jpeg(), {"Content-Type": "application/x-image"}, 4),  # default top_k 5, clamped to 4 classes
]
BAD = [  # (body, headers, status)
    (samples.random_bytes(), {"Content-Type": "image/jpeg"}, 400),
    (samples.png(), {"Content-Type": "text/csv"}, 415),
    (samples.png(), {"Content-Type": "image/png", "Accept": "text/csv"}, 406),
    (samples.png(), {"Content-Type": "image/png", TOP_K: "top_k=0"}, 400),
]


def expected_answers(model_dir, monkeypatch):
    """What each good request gets alone, in-process, from the handler with the server's engine."""
    monkeypatch.delenv(settings.ENGINE_EXPORT_ENV, raising=False)
    model = handler.model_fn(str(model_dir))
    answers = []
    for body, headers, _ in GOOD:
        content_type = headers["Content-Type"]
        request = handler.input_fn(body, content_type)
        request.top_k = handler.parse_top_k(headers.get(TOP_K))
        answers.append(json.loads(handler.output_fn(handler.predict_fn(request, model), None)[0]))
    return model.engine, answers


def test_a_batch_of_good_and_bad_requests_gets_one_right_answer_each(server, model_dir, monkeypatch):
    requests = (GOOD + BAD) * 2  # 16 clients at once: at least four batches of 4
    results = [None] * len(requests)

    def client(number):
        body, headers, _ = requests[number]
        results[number] = post(server.port, body, headers)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine_name, answers = expected_answers(model_dir, monkeypatch)
    for number, ((_, _, want), (status, headers, body)) in enumerate(zip(requests, results)):
        assert headers["content-type"].startswith("application/json"), (number, headers)
        if number % len(GOOD + BAD) < len(GOOD):
            assert status == 200, (number, body)
            expected = answers[number % len(GOOD + BAD)]
            got = json.loads(body)
            assert [[p["label"] for p in row] for row in got["predictions"]] == \
                [[p["label"] for p in row] for row in expected["predictions"]]
            assert all(len(row) == min(want, len(CLASSES)) for row in got["predictions"])
            for row, expected_row in zip(got["predictions"], expected["predictions"]):
                for item, expected_item in zip(row, expected_row):
                    assert abs(item["probability"] - expected_item["probability"]) < 1e-4
            assert headers[settings.ENGINE_HEADER.lower()] == engine_name
        else:
            assert status == want, (number, body)
            message = json.loads(body)
            assert set(message) == {"error", "message"} and "Traceback" not in body
    # Every request went through a batch of several (a lone request is not logged), good and bad together.
    batches = [re.search(r"A batch of (\d+) requests: (\d+) accepted, (\d+) refused", line)
               for line in server.log_tail(10 ** 7).splitlines()]
    counts = [tuple(int(n) for n in found.groups()) for found in batches if found]
    assert sum(size for size, _, _ in counts) == len(requests), counts
    assert sum(accepted for _, accepted, _ in counts) == len(requests) // 2, counts
    assert any(accepted and refused for _, accepted, refused in counts), counts


def test_responses_and_the_log_name_the_engine(server):
    expected = "openvino" if engine.openvino_available() else "torch"
    status, headers, body = post(server.port, samples.png(), {"Content-Type": "image/png"}, "/invocations")
    assert status == 200, body
    assert headers[settings.ENGINE_HEADER.lower()] == expected
    assert f"engine {expected}" in server.log_tail(10 ** 7)
