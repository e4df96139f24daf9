"""Serve a model on this machine the way a SageMaker endpoint serves it, and stop it.

`deploy` unpacks `model.tar.gz` into the server's `/opt/ml`-shaped tree (`local_jobs/serving/port-<N>/`)
and has the chosen backend serve it on 127.0.0.1 until a prediction answers; `delete` stops whichever
backend serves on a port. Querying it is `client`'s part.
"""
from pathlib import Path

from image_classifier.contract import SERVING_PORT, MLPaths

from .. import LOCAL_JOBS_DIR, LauncherError
from . import backend, docker, process
from .client import port_in_use
from .jobs import describe, job_of
from .trees import install_model, newest_model, server_dir


def deploy(model=None, port=SERVING_PORT, mode="auto", detach=False):
    runner = backend(mode)
    model = Path(model) if model else newest_model(LOCAL_JOBS_DIR)
    if model is None:
        raise LauncherError(f"No trained model in {LOCAL_JOBS_DIR}: run `python launch.py train --local` "
                            f"first, or give one with --model PATH (model.tar.gz or a model folder).")
    if not 1 <= port <= runner.HIGHEST_PORT:
        raise LauncherError(f"--port {port}: the model server (MMS) accepts ports 1 to {runner.HIGHEST_PORT} only.")
    running = process.read_record(port)
    if running:
        raise LauncherError(f"A local model server already runs on port {port} (pid {running['pid']}): "
                            f"stop it with `python launch.py delete --local --port {port}`.")
    if port_in_use(port):
        raise LauncherError(f"Port {port} is already in use: pick another with --port.")
    job = job_of(model)
    print(f"Serving {describe(job) if job else 'the model'} from {model}", flush=True)
    model_dir = MLPaths(server_dir(port)).model
    install_model(model, model_dir)
    runner.serve(model_dir, port, detach)


def delete(port=SERVING_PORT):
    """Stop the local model server on `port`, in the image or as a process."""
    for runner in (docker, process):
        stopped = runner.stop(port)
        if stopped:
            print(f"Stopped {stopped}.")
            return
    print(f"No local model server is running on port {port}.")
