"""Local runs that emulate SageMaker on this machine, one backend per mode, chosen once by `backend(mode)`:

- `process`: the container's entry points from this Python's environment, as plain processes;
- `docker`: the image, run as SageMaker runs it.

Each backend offers `train(job)`, `train_hosts(jobs)`, `serve(model_dir, port, detach)` and `stop(port)`
over the `/opt/ml` trees of `trees`; `client` talks to a served model over HTTP, whichever serves it.
"""
from ..docker_image import configured_image, image_available
from . import docker, process

BACKENDS = {backend.MODE: backend for backend in (docker, process)}
MODES = ("auto", *BACKENDS)  # what --local accepts


def backend(mode):
    """The backend for `--local MODE`: `docker` or `process` as asked; `auto` prefers the image when an
    engine runs and the image is on this machine, and says which it picked."""
    if mode == "auto":
        if image_available():
            print(f"local mode: docker ({configured_image()})")
            mode = docker.MODE
        else:
            print("local mode: process (no docker engine or no image; `./build_and_push.sh --no-push` builds it)")
            mode = process.MODE
    return BACKENDS[mode]
