"""Workers sharing the CPU cores request by request (serving/core_share.py): the busy locks between
processes, a dead worker's lock released, the handler's choice of forward pass and the threads each one runs on."""
import dataclasses
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import serving_samples as samples
from conftest import untrained_artifact
from image_classifier.serving import core_share, engine, handler, settings

CLASSES = ["a", "b", "c"]


def test_a_request_is_alone_until_another_worker_is_busy(tmp_path):
    first, second = core_share.CoreShare(tmp_path, 2), core_share.CoreShare(tmp_path, 2)  # two workers' files
    with first.claim() as alone:
        assert alone
        with second.claim() as second_alone:
            assert not second_alone
            with first.claim() as third_alone:  # more requests than slots: counted busy, never alone
                assert not third_alone
    with second.claim() as alone:
        assert alone


def test_the_busy_files_are_the_server_users_alone(tmp_path):
    core_share.CoreShare(tmp_path, 2)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {"worker-0.busy": 0o600, "worker-1.busy": 0o600}


def test_sharing_is_logged_with_each_count_in_its_place(tmp_path, caplog):
    served = settings.ServingSettings(**{**dataclasses.asdict(settings.load(environ={}, cores=4)), "workers": 3,
                                         "torch_threads": 4, "narrow_threads": 1, "share_cores": True})
    with caplog.at_level(logging.INFO, logger=core_share.__name__):
        share = core_share.from_environment(served, tmp_path)
    assert len(share.slots) == 3
    assert caplog.messages == ["Cores shared by 3 workers: 4 threads per request while the others are idle, "
                               "1 while not"]


def test_a_killed_workers_slot_is_free_again(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from image_classifier.serving import core_share
        with core_share.CoreShare({str(tmp_path)!r}, 2).claim():
            print("busy", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "busy"
        share = core_share.CoreShare(tmp_path, 2)
        with share.claim() as alone:
            assert not alone
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with share.claim() as alone:
            assert alone
    finally:
        holder.kill()
        holder.wait()


def load_shared(tmp_path, monkeypatch, engine_name=None):
    """A worker's model as serve starts it on 2 cores: 2 workers, sharing the cores (the engine: auto, or
    `engine_name`)."""
    model_dir = untrained_artifact(tmp_path / "model", CLASSES)
    for name in (settings.WORKERS_ENV, settings.TORCH_THREADS_ENV, settings.SHARE_CORES_ENV, settings.ENGINE_ENV):
        monkeypatch.delenv(name, raising=False)
    if engine_name:
        monkeypatch.setenv(settings.ENGINE_ENV, engine_name)
    monkeypatch.setattr(settings, "cpu_count", lambda: 2)
    monkeypatch.setenv(settings.CORE_SHARE_DIR_ENV, str(tmp_path))
    return handler.model_fn(str(model_dir))


@pytest.fixture
def shared_model(tmp_path, monkeypatch):
    return load_shared(tmp_path, monkeypatch)


def test_the_handler_uses_the_narrow_forward_while_another_worker_is_busy(shared_model, tmp_path):
    assert shared_model.core_share is not None and shared_model.narrow_forward is not shared_model.forward
    used = []
    model = dataclasses.replace(shared_model, forward=lambda x: used.append("wide") or shared_model.forward(x),
                                narrow_forward=lambda x: used.append("narrow") or shared_model.narrow_forward(x))
    request = handler.input_fn(samples.png(), "image/png")
    expected = handler.predict_fn(request, model).probabilities
    with core_share.CoreShare(tmp_path, 2).claim():  # the other worker, busy
        busy = handler.predict_fn(request, model).probabilities
    assert used == ["wide", "narrow"]
    assert np.allclose(expected, busy, atol=1e-6)


@pytest.mark.parametrize("name", ["torch", pytest.param("openvino", marks=pytest.mark.skipif(
    not engine.openvino_available(), reason="openvino is not installed"))])
def test_the_narrow_forward_runs_on_the_workers_share_of_the_cores(name, tmp_path, monkeypatch):
    """The handler's own model: its wide forward runs on both cores, its narrow one on one (each engine)."""
    model = load_shared(tmp_path, monkeypatch, name)
    assert model.engine == name
    if name == "openvino":
        threads = lambda forward: forward.compiled.get_property("INFERENCE_NUM_THREADS")  # noqa: E731
        assert (threads(model.forward), threads(model.narrow_forward)) == (2, 1)
        return
    seen, convolve = [], torch.nn.functional.conv2d

    def counting(*args, **kwargs):  # every convolution of the forward pass notes the threads it runs on
        seen.append(torch.get_num_threads())
        return convolve(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", counting)
    inputs = np.zeros((1, 3, 16, 16), np.float32)
    with torch.inference_mode():
        for forward, threads in ((model.forward, 2), (model.narrow_forward, 1)):
            seen.clear()
            before = torch.get_num_threads()
            forward(inputs)
            assert seen and set(seen) == {threads}
            assert torch.get_num_threads() == before  # the worker's own count, restored


def test_one_worker_or_a_fixed_split_shares_nothing(tmp_path, monkeypatch):
    model_dir = untrained_artifact(tmp_path / "model", CLASSES)
    monkeypatch.setenv(settings.CORE_SHARE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(settings, "cpu_count", lambda: 2)
    for env in ({settings.WORKERS_ENV: "1"}, {settings.SHARE_CORES_ENV: "false"}):
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            assert handler.model_fn(str(model_dir)).core_share is None
    assert not list(tmp_path.glob("*.busy"))
