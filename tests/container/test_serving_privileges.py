"""Issue 20, item 6: started as root, `serve` runs multi-model-server and its workers as an unprivileged
user, and the model artifact is readable by it."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

import serving_harness as harness
import serving_samples as samples
from image_classifier import contract
from image_classifier.serving import serve, settings
from serving_harness import SERVE
from test_container import image  # noqa: F401  (the fixture: the image of this tree)

UNPRIVILEGED = "nobody"  # a user every Debian host has; the image's own is model-server
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="serve drops privileges only when it runs as root")


def python_reachable_by(user):
    """Whether `user` can run this interpreter and import the package (not where Python lives under /root)."""
    try:
        return subprocess.run([sys.executable, "-c", "import image_classifier"], user=user, extra_groups=[],
                              capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


def test_atomic_write_leaves_a_file_the_umask_allows(tmp_path):
    """mkstemp's 0600 left model.pth unreadable to the model server's user."""
    previous = os.umask(0o022)
    try:
        contract.atomic_write_text(tmp_path / "model.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "model.json").stat().st_mode & 0o777 == 0o644


def test_the_server_account_is_the_setting_s_user_only_for_root(monkeypatch):
    served = settings.load({settings.SERVER_USER_ENV: UNPRIVILEGED})
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    account = serve.server_account(served, {settings.SERVER_USER_ENV: UNPRIVILEGED})
    assert account.uid != 0 and account.name == UNPRIVILEGED
    assert account.popen_arguments()["extra_groups"] == list(account.groups)  # never root's groups
    with pytest.raises(serve.ServeError, match="no-such-user-here: there is no such user"):
        serve.server_account(settings.load({settings.SERVER_USER_ENV: "no-such-user-here"}),
                             {settings.SERVER_USER_ENV: "no-such-user-here"})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert serve.server_account(served, {settings.SERVER_USER_ENV: UNPRIVILEGED}) is None


@as_root
@pytest.mark.skipif(python_reachable_by(UNPRIVILEGED), reason="here the unprivileged user can run Python")
def test_serve_as_root_refuses_to_start_a_server_its_user_cannot_run(trained_model_dir, tmp_path):
    """Here Python lives under /root (0700): the server user could not run it, and serve says so
    instead of running the server as root."""
    shutil.copytree(trained_model_dir, tmp_path / "model")
    result = subprocess.run([str(SERVE)], env=dict(os.environ, SAGEMAKER_BASE_DIR=str(tmp_path),
                                                   **{settings.SERVER_USER_ENV: UNPRIVILEGED}),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"The model server's user {UNPRIVILEGED} cannot use what it needs" in result.stderr


@as_root
@pytest.mark.slow
@pytest.mark.skipif(not python_reachable_by(UNPRIVILEGED),
                    reason=f"user {UNPRIVILEGED} cannot run {sys.executable} here (e.g. under /root, mode 0700); "
                           "the container test covers the image's model-server user")
@harness.require_java(pytest)
def test_the_model_server_runs_as_the_unprivileged_user(trained_model_dir):
    """The model is written 0600 (as older versions wrote it): serve serves a copy its user can read."""
    base_dir = Path(tempfile.mkdtemp(prefix="serve-as-user-"))
    try:
        base_dir.chmod(0o755)
        shutil.copytree(trained_model_dir, base_dir / "model")
        (base_dir / "model" / "model.pth").chmod(0o600)
        server = harness.Server(base_dir, **{settings.SERVER_USER_ENV: UNPRIVILEGED})
        try:
            server.wait_ready(samples.png())
            mms = server.processes()[1:]  # everything below serve: Java and every Python worker
            assert server.workers() and all(p.uids().real != 0 and p.uids().effective != 0 for p in mms)
            assert all(0 not in p.gids() for p in mms)
        finally:
            exit_code, alive = server.stop()
        assert exit_code == 0 and not alive
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.slow
def test_in_the_image_the_model_server_runs_as_model_server(image, trained_model_dir, tmp_path):
    """`docker run IMAGE serve` as SageMaker runs it (root): Java and the workers run as model-server, even
    for a model written 0600 (an artifact of an older version)."""
    from launcher.local import docker as local_docker

    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model)
    (model / "model.pth").chmod(0o600)
    port = harness.free_port()
    local_docker.serve(model, port, detach=True, image=image, env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    try:
        # docker top runs the host's ps over the container's processes; it needs a pid column.
        top = subprocess.run(["docker", "top", local_docker.serving_container(port), "-eo", "pid,uid,args"],
                             capture_output=True, text=True, check=True).stdout.splitlines()[1:]
        mms = [line for line in top if "java" in line or "model_service_worker" in line]
        assert len(mms) >= 3, top  # the frontend, the listener, a worker
        assert all(line.split()[1] == "1000" for line in mms), top  # model-server's uid
    finally:
        assert local_docker.stop(port)
