"""Integration: the real `serve` (multi-model-server under Java) on a free loopback port, and the launcher's
local deploy / predict / delete. One server per test class; every process a test starts is stopped."""
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pytest

import launch
from image_classifier.serving.settings import MAX_PORT
import serving_samples as samples
from launcher import local_serving

pytestmark = pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
                                reason="multi-model-server needs Java 17 (apt-get install openjdk-17-jre-headless)")

SERVE = Path(sys.executable).parent / "serve"
READY_SECONDS = 300
REQUEST_SECONDS = 120


def free_port():
    """A free loopback port MMS accepts (below 32767, so not one of Linux's ephemeral ports)."""
    for port in random.sample(range(20000, MAX_PORT), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.fail("no free port below 32767")


def request(port, method, path, body=None, headers=None):
    """(status, content type, body text) of one HTTP request to the local server."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_SECONDS)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def invoke(port, body, content_type, **headers):
    all_headers = {"Content-Type": content_type} if content_type else {}
    all_headers.update({key.replace("_", "-"): value for key, value in headers.items()})
    return request(port, "POST", "/invocations", body, all_headers)


def serve_process(base_dir, port, **extra_env):
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(base_dir), SAGEMAKER_BIND_TO_PORT=str(port),
               IMAGE_CLASSIFIER_BIND_ADDRESS="127.0.0.1", IMAGE_CLASSIFIER_RUNTIME_DIR=str(base_dir), **extra_env)
    return subprocess.Popen([str(SERVE)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(process, port):
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode(errors="replace")[-3000:]
        try:
            if invoke(port, samples.png(), "image/png")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"serve did not answer within {READY_SECONDS} s")


def stop(process):
    """SIGTERM serve like SageMaker does; returns the processes of its tree still alive afterwards."""
    if process.poll() is not None:
        return process.returncode, []
    tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    exit_code = process.wait(timeout=60)
    _, alive = psutil.wait_procs(tree, timeout=10)
    for leftover in alive:
        leftover.kill()
    return exit_code, alive


def assert_clean_error(status, content_type, body, expected):
    assert status == expected, body
    assert "Traceback" not in body and 'File "' not in body
    message = json.loads(body)
    assert message.get("message"), body


@pytest.mark.slow
class TestServe:
    @pytest.fixture(scope="class")
    def port(self, trained_model_dir, tmp_path_factory):
        base_dir = tmp_path_factory.mktemp("opt_ml")
        shutil.copytree(trained_model_dir, base_dir / "model")
        port = free_port()
        process = serve_process(base_dir, port)
        try:
            wait_ready(process, port)
            yield port
        finally:
            exit_code, alive = stop(process)
        assert exit_code == 0 and not alive, f"serve exit {exit_code}, left running: {alive}"

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

    def test_body_over_the_payload_cap_is_413(self, port):
        status, _, body = invoke(port, os.urandom(7 * 1024 * 1024), "image/jpeg")
        assert status == 413 and "Traceback" not in body
        assert invoke(port, samples.jpeg(), "image/jpeg")[0] == 200

    def test_a_killed_worker_loses_no_later_request(self, port):
        java = [p for p in psutil.process_iter(["cmdline"])
                if "com.amazonaws.ml.mms.ModelServer" in (p.info["cmdline"] or [])
                and f"127.0.0.1:{port}" in " ".join(_config_of(p))]
        assert len(java) == 1
        # MMS runs one listener process per model; it forks one worker per connection from the frontend.
        [listener] = [p for p in java[0].children() if "model_service_worker.py" in " ".join(p.cmdline())]
        workers = listener.children()
        assert workers  # one per CPU core by default
        workers[0].kill()  # like the OOM killer
        psutil.wait_procs(workers[:1], timeout=10)
        answers = [invoke(port, samples.png(), "image/png")[0] for _ in range(4)]
        assert answers == [200] * 4


def _config_of(java):
    """The MMS config file a Java frontend was started with, as text (to tell this test's server apart)."""
    cmdline = java.cmdline()
    try:
        return [Path(cmdline[cmdline.index("-f") + 1]).read_text()]
    except (ValueError, IndexError, OSError):
        return []


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
        monkeypatch.setattr(local_serving, "SERVING_DIR", tmp_path / "serving")
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
