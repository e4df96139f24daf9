"""Integration: the real `serve` (multi-model-server under Java) on a free loopback port, and the launcher's
local deploy / predict / delete. One server per test class; every process a test starts is stopped."""
import json
import os
import shutil
import subprocess
import tarfile
import time

import psutil
import pytest

import launch
import serving_harness as harness
import serving_samples as samples
from launcher.local import trees
from serving_harness import SERVE, free_port, invoke, request

pytestmark = harness.require_java(pytest)


def assert_clean_error(status, content_type, body, expected):
    assert status == expected, body
    assert content_type.startswith("application/json"), content_type
    assert "Traceback" not in body and 'File "' not in body
    message = json.loads(body)
    assert message.get("message"), body


@pytest.mark.slow
class TestServe:
    @pytest.fixture(scope="class")
    def server(self, trained_model_dir, tmp_path_factory):
        base_dir = tmp_path_factory.mktemp("opt_ml")
        shutil.copytree(trained_model_dir, base_dir / "model")
        server = harness.Server(base_dir, SAGEMAKER_MODEL_SERVER_WORKERS=2)  # a killed one has a peer
        try:
            server.wait_ready(samples.png())
            yield server
        finally:
            exit_code, alive = server.stop()
        assert exit_code == 0 and not alive, f"serve exit {exit_code}, left running: {alive}"

    @pytest.fixture(scope="class")
    def port(self, server):
        return server.port

    def test_ping(self, port):
        assert request(port, "GET", "/ping")[0] == 200

    @pytest.mark.parametrize("name", sorted(samples.GOOD_PICTURES))
    def test_every_picture_mode_is_answered(self, port, name):
        content_type, make = samples.GOOD_PICTURES[name]
        status, response_type, body = invoke(port, make(), content_type)
        assert status == 200, body
        assert response_type.startswith("application/json")
        [labels] = json.loads(body)["predictions"]
        assert len(labels) == 3  # top_k 5 clamped to the 3 classes
        assert {"label", "index", "probability"} == set(labels[0])
        assert abs(sum(item["probability"] for item in labels) - 1) < 1e-3

    def test_json_batch_and_top_k(self, port):
        body = samples.batch_json(samples.png(), samples.cmyk_jpeg(), samples.exif_rotated_jpeg())
        status, _, response = invoke(port, body, "application/json",
                                     X_Amzn_SageMaker_Custom_Attributes="top_k=2")
        assert status == 200, response
        predictions = json.loads(response)["predictions"]
        assert [len(labels) for labels in predictions] == [2, 2, 2]
        assert predictions[0][0]["probability"] >= predictions[0][1]["probability"]

    @pytest.mark.parametrize("body, content_type, headers, expected", [
        (b"", "image/jpeg", {}, 400),
        (samples.random_bytes(), "image/jpeg", {}, 400),
        (samples.truncated_jpeg(), "image/jpeg", {}, 400),
        (samples.png(), "application/x-npy", {}, 415),
        (samples.png(), None, {}, 415),
        (samples.png(), "text/csv", {}, 415),
        ("{not json", "application/json", {}, 400),
        ('{"instances": [{"b64": "@@@"}]}', "application/json", {}, 400),
        (samples.bomb_png(), "image/png", {}, 413),
        (samples.png(), "image/png", {"Accept": "text/csv"}, 406),
        (samples.png(), "image/png", {"X_Amzn_SageMaker_Custom_Attributes": "top_k=zero"}, 400),
    ], ids=["empty", "random-bytes", "truncated-jpeg", "wrong-type", "no-type", "binary-as-csv", "bad-json",
            "bad-base64", "decompression-bomb", "bad-accept", "bad-top-k"])
    def test_bad_input_is_refused_and_the_server_keeps_serving(self, port, body, content_type, headers, expected):
        assert_clean_error(*invoke(port, body, content_type, **headers), expected)
        assert invoke(port, samples.jpeg(), "image/jpeg")[0] == 200

    @pytest.mark.parametrize("megabytes", [7, 20])
    def test_a_body_over_the_payload_cap_sent_whole_is_a_json_413(self, port, megabytes):
        assert_clean_error(*invoke(port, os.urandom(megabytes * 1024 * 1024), "image/jpeg"), 413)
        assert invoke(port, samples.jpeg(), "image/jpeg")[0] == 200

    def test_a_body_far_over_the_cap_is_cut_by_mms_and_the_server_keeps_serving(self, port):
        """Over 4x the cap MMS refuses the body itself (a bare 413, or a reset while the client is still
        sending); SageMaker's front end refuses anything over 6 MB before it reaches the container."""
        try:
            status = invoke(port, os.urandom(30 * 1024 * 1024), "image/jpeg")[0]
        except (ConnectionResetError, BrokenPipeError):
            status = 413
        assert status == 413
        assert invoke(port, samples.jpeg(), "image/jpeg")[0] == 200

    @pytest.mark.parametrize("body, content_type, words", [
        (samples.nested_json(), "application/json", "nested too deeply"),
        ('{"instances": [{"b64": 5}, 1]}', "application/json", "instances[0]"),
        ('{"instances": "all of them"}', "application/json", "instances"),
        (samples.ico(), "application/x-image", "supported format"),
    ], ids=["deep-json", "wrong-types", "instances-string", "ico"])
    def test_more_client_mistakes_are_json_400s(self, port, body, content_type, words):
        status, content, response = invoke(port, body, content_type)
        assert_clean_error(status, content, response, 400)
        assert words in json.loads(response)["message"]

    def test_a_pixel_bomb_batch_is_a_413_in_seconds_and_every_worker_lives(self, server):
        """Issue 12's attack: ~30 tiny lossless WebPs that decode to 49 MP each, in one 80 KB request."""
        workers = {p.pid for p in server.workers()}
        started = time.monotonic()
        status, content, response = invoke(server.port, samples.batch_json(*[samples.pixel_bomb_webp()] * 30),
                                           "application/json")
        assert time.monotonic() - started < 10
        assert_clean_error(status, content, response, 413)
        assert "budget" in json.loads(response)["message"]
        assert invoke(server.port, samples.jpeg(), "image/jpeg")[0] == 200
        assert {p.pid for p in server.workers()} == workers

    def test_one_49_megapixel_picture_is_answered_and_every_worker_lives(self, server):
        workers = {p.pid for p in server.workers()}
        status, _, response = invoke(server.port, samples.pixel_bomb_webp(), "application/x-image")
        assert status == 200, response
        assert {p.pid for p in server.workers()} == workers

    @pytest.mark.parametrize("method, path", [("POST", "/models?url=/tmp/model&model_name=other"),
                                              ("DELETE", "/models/model"),
                                              ("PUT", "/models/model?min_worker=0&synchronous=true"),
                                              ("GET", "/models")])
    def test_the_management_api_is_not_on_the_inference_port(self, server, method, path):
        status, _, body = request(server.port, method, path)
        assert status in (404, 405), body
        assert invoke(server.port, samples.png(), "image/png")[0] == 200
        # It exists, on serve's private unix socket, where it still sees our model and its workers.
        status, body = server.management("GET", "/models/model")
        assert status == 200
        description = json.loads(body)
        description = description[0] if isinstance(description, list) else description  # MMS versions differ
        assert description["modelName"] == "model" and len(description["workers"]) == len(server.workers())

    def test_a_killed_worker_is_replaced_and_no_later_request_is_lost(self, server):
        workers = server.workers()
        assert workers  # one per CPU core by default
        victim = workers[0]
        victim.kill()  # like the OOM killer
        psutil.wait_procs([victim], timeout=10)
        answers = [invoke(server.port, samples.png(), "image/png")[0] for _ in range(4)]
        assert answers == [200] * 4
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(server.workers()) < len(workers):
            time.sleep(0.5)
        replaced = {p.pid for p in server.workers()}
        assert len(replaced) == len(workers) and victim.pid not in replaced


def test_serve_refuses_a_broken_artifact(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{broken")
    result = subprocess.run([str(SERVE)], env=dict(os.environ, SAGEMAKER_BASE_DIR=str(tmp_path)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "The model artifact is broken" in result.stderr


def test_serve_refuses_a_missing_model(tmp_path):
    result = subprocess.run([str(SERVE)], env=dict(os.environ, SAGEMAKER_BASE_DIR=str(tmp_path)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "No model folder" in result.stderr


class TestLauncher:
    @pytest.mark.slow
    def test_deploy_detached_predict_delete(self, trained_model_dir, tmp_path, monkeypatch, capsys):
        monkeypatch.setattr(trees, "SERVING_DIR", tmp_path / "serving")
        model_tar = tmp_path / "model.tar.gz"
        with tarfile.open(model_tar, "w:gz") as tar:
            for path in sorted(trained_model_dir.iterdir()):
                tar.add(path, arcname=path.name)
        port = free_port()
        picture = tmp_path / "fox.jpg"
        samples.rgb_image().save(picture)
        try:
            assert launch.main(["deploy", "--local", "process", "--model", str(model_tar), "--port", str(port),
                                "--detach"]) == 0
            assert f"http://127.0.0.1:{port}/invocations" in capsys.readouterr().out
            record = json.loads((tmp_path / "serving" / f"port-{port}" / "server.json").read_text())
            tree = [psutil.Process(record["pid"])] + psutil.Process(record["pid"]).children(recursive=True)

            assert launch.main(["predict", "--local", "--port", str(port), "--top-k", "2", str(picture)]) == 0
            table = capsys.readouterr().out
            assert str(picture) in table and "probability" in table and table.count("%") == 2
            assert "(answered by the openvino engine)" in table  # a set too small for an int8 model

            assert launch.main(["predict", "--local", "--port", str(port), "--json", str(picture)]) == 0
            assert len(json.loads(capsys.readouterr().out)["predictions"][0]) == 3

            not_a_picture = tmp_path / "notes.txt"
            not_a_picture.write_text("hello")
            assert launch.main(["predict", "--local", "--port", str(port), str(not_a_picture)]) == 1
            assert "error 400" in capsys.readouterr().out
        finally:
            assert launch.main(["delete", "--local", "--port", str(port)]) == 0
        assert "Stopped the local model server" in capsys.readouterr().out
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive
        assert launch.main(["predict", "--local", "--port", str(port), str(picture)]) == 1

    def test_deploy_docker_without_the_image_says_how_to_get_it(self, capsys, tmp_path, monkeypatch,
                                                                  trained_model_dir):
        recorded = tmp_path / "image-uri"
        recorded.write_text("image-classifier:no-such-tag")
        monkeypatch.setenv("IMAGE_URI_FILE", str(recorded))
        assert launch.main(["deploy", "--local", "docker", "--model", str(trained_model_dir),
                            "--port", str(free_port())]) == 1
        error = capsys.readouterr().err
        assert ("Cannot run the image" in error
                or "image-classifier:no-such-tag is not on this machine: build it with" in error), error
