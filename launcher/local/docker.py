"""The docker backend: the image on this machine, run exactly as SageMaker starts it: `docker run IMAGE train|serve`.

Training: the job's `/opt/ml` tree (made by `trees.prepare_job`) is mounted at `/opt/ml`, the
container's host name is `algo-1` (the name in resourceconfig.json), and the output goes live to the
job's train.log; SIGTERM/Ctrl-C reaches the job through the docker CLI's signal proxy and tini.
Serving: the model folder is mounted read-only at `/opt/ml/model` and the container's port 8080 is
published on 127.0.0.1:PORT; the container is named after the port so `stop(port)` finds it.
Several training hosts: each is a container named algo-N on a docker network of the job's own.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from image_classifier.contract import CONTAINER_PATHS, DEFAULT_HOST, PAYLOAD_CAP_ENV, SERVING_PORT, MLPaths
from image_classifier.serving import settings as serving_settings

from .. import LauncherError
from ..docker_image import configured_image, docker, engine_problem, image_available, image_exists, require_image
from .client import LOCAL_HOST, READY_TIMEOUT_SECONDS, invocations_url, wait_for_prediction
from .hosts import CONTAINER_INTERFACE, host_names, run_hosts
from .processes import OFF_AWS_ENV, stream

MODE = "docker"
HOST_INTERFACE = CONTAINER_INTERFACE
HIGHEST_PORT = 65535  # in the image, MMS itself listens on SageMaker's port; docker publishes any
SHM_SIZE = "2g"  # DataLoader workers share tensors through /dev/shm (docker's default is 64 MB)
STOP_TIMEOUT_SECONDS = 30
# Serving settings a local `deploy --local docker` passes from this shell into the container, as a
# process-mode server inherits them (not the port or the address: the container serves on 0.0.0.0:8080).
SERVING_SETTINGS_ENV = (serving_settings.WORKERS_ENV, serving_settings.TORCH_THREADS_ENV, serving_settings.SHARE_CORES_ENV,
                        serving_settings.TIMEOUT_ENV, PAYLOAD_CAP_ENV,
                        serving_settings.MAX_PIXELS_ENV, serving_settings.PIXEL_BUDGET_ENV,
                        serving_settings.MAX_BATCH_ENV, serving_settings.FORWARD_BATCH_ENV,
                        serving_settings.TOP_K_ENV, serving_settings.OPTIMIZE_ENV, serving_settings.JVM_ARGS_ENV)


def _env_args(env):
    return [arg for key, value in {**OFF_AWS_ENV, **(env or {})}.items() for arg in ("-e", f"{key}={value}")]


def gpu_args():
    """`--gpus all` where the host has an NVIDIA GPU and docker the NVIDIA runtime, as on GPU instances."""
    if shutil.which("nvidia-smi") is None:
        return []
    runtimes = docker("info", "--format", "{{json .Runtimes}}", check=False, timeout=20).stdout
    return ["--gpus", "all"] if "nvidia" in runtimes else []


def _container_name(text):
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text).lstrip("-_.") or "job"


def training_container(job):
    """Named after the job and its folder: two jobs of the same name elsewhere do not collide."""
    folder = hashlib.sha1(str(Path(job.dir).resolve()).encode()).hexdigest()[:6]
    return _container_name(f"{job.name}-train-{folder}")


def training_command(job, image, env=None):
    """The `docker run ... IMAGE train` command for a LocalJob (its channels are symlinks to data
    folders: each source is mounted read-only at its own path so the links resolve in the container)."""
    job_dir = Path(job.dir).resolve()
    command = ["docker", "run", "--rm", "--name", training_container(job), "--hostname", DEFAULT_HOST,
               "--shm-size", SHM_SIZE, "-v", f"{job_dir}:{CONTAINER_PATHS.base}"]
    data_dir = MLPaths(job_dir).data
    for channel in sorted(data_dir.iterdir()) if data_dir.is_dir() else []:
        if channel.is_symlink():
            source = channel.resolve()
            if not source.exists():
                raise LauncherError(f"Channel '{channel.name}': {source} does not exist.")
            command += ["-v", f"{source}:{source}:ro"]
    if os.getuid() != 0:  # files in the job tree stay the user's (SageMaker itself runs as root)
        command += ["--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp"]
    return command + gpu_args() + _env_args(env) + [image, "train"]


def train(job, image=None, echo=True, env=None):
    """Run the job in the image; output streams to the terminal and job.log_file. Returns the exit code."""
    image = require_image(image)
    command = training_command(job, image, env)
    print(f"local mode: docker ({image})")
    return stream(command, job.log_file, echo=echo)


def network(jobs):
    """The docker network the hosts' containers share (named after the job's folder, like the containers)."""
    return f"{training_container(jobs[0])}-net"


def host_commands(jobs, image):
    """(command, None) per host: `docker run IMAGE train` with the host's tree at /opt/ml, its name as host
    name and network alias on the job's own docker network (docker's DNS resolves algo-1, algo-2)."""
    job_network = network(jobs)
    commands = []
    for job, host in zip(jobs, host_names(len(jobs))):
        command = training_command(job, image)
        command[command.index("--hostname") + 1] = host
        at = command.index(image)
        commands.append((command[:at] + ["--network", job_network, "--network-alias", host] + command[at:], None))
    return commands


def train_hosts(jobs, image=None, echo=True):
    """Each host as a container of the image on a docker network of its own, as SageMaker runs them."""
    image = require_image(image)
    job_network = network(jobs)
    docker("network", "create", job_network, timeout=60)
    try:
        print(f"local mode: docker ({image}), {len(jobs)} containers on network {job_network}")
        return run_hosts(jobs, host_commands(jobs, image), echo)
    finally:
        docker("network", "rm", job_network, check=False, timeout=60)


# ----------------------------------------------------------------------------------------- serving
def serving_container(port):
    return f"image-classifier-serve-{port}"


def serving_command(name, port, model_dir, image, env=None, environ=None):
    """`docker run -d ... IMAGE serve` arguments: the port published on loopback, the model read-only,
    and the serving settings of this shell (`environ`) passed in, as a process-mode server inherits them."""
    environ = os.environ if environ is None else environ
    env = {**{key: environ[key] for key in SERVING_SETTINGS_ENV if key in environ}, **(env or {})}
    return ["run", "-d", "--name", name, "-p", f"{LOCAL_HOST}:{port}:{SERVING_PORT}",
            "-v", f"{model_dir}:{CONTAINER_PATHS.model}:ro", *gpu_args(), *_env_args(env), image, "serve"]


def container_running(name):
    result = docker("inspect", "--format", "{{.State.Running}}", name, check=False, timeout=30)
    return result.returncode == 0 and result.stdout.strip() == "true"


def serve(model_dir, port=SERVING_PORT, detach=False, image=None, env=None, ready_timeout=READY_TIMEOUT_SECONDS):
    """Serve `model_dir` (model.pth + model.json) from the image on 127.0.0.1:`port`; returns once a
    prediction answers when `detach`, else follows the log until Ctrl-C and stops the container."""
    image = require_image(image)
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "model.json").is_file():
        raise LauncherError(f"{model_dir} is not a model folder (no model.json).")
    name = serving_container(port)
    if container_running(name):
        raise LauncherError(f"The container {name} already serves on port {port}: stop it with "
                            f"`python launch.py delete --local --port {port}`.")
    docker("rm", "-f", name, check=False, timeout=60)  # a stopped leftover with the same name
    started = docker(*serving_command(name, port, model_dir, image, env), check=False, timeout=120)
    if started.returncode != 0:
        raise LauncherError(f"docker run failed: {started.stdout.strip()[-1000:]}")
    print(f"Starting {image} serve as container {name} on port {port} ...")
    try:
        wait_until_ready(name, port, ready_timeout)
    except BaseException:
        stop(port)
        raise
    print(f"Model server ready: {invocations_url(port)} (container {name})")
    if detach:
        print(f"  stop: python launch.py delete --local --port {port}   (or: docker rm -f {name})")
        return name
    print("Serving in the foreground; Ctrl-C stops it.")
    try:
        subprocess.run(["docker", "logs", "-f", "--since", "0s", name])
        raise LauncherError(f"The model server exited; see `docker logs {name}`.")
    except KeyboardInterrupt:
        stop(port)
        print("\nModel server stopped.")
    return name


def wait_until_ready(name, port, timeout):
    def exited():
        if container_running(name):
            return None
        logs = docker("logs", "--tail", "30", name, check=False, timeout=30).stdout
        return f"The model server container {name} exited before it answered:\n{logs}"

    wait_for_prediction(port, timeout, exited, f"see `docker logs {name}`")


def stop(port):
    """Stop and remove the serving container on `port` (SIGTERM first, so MMS shuts down cleanly).
    Returns what was stopped, in words, or None when there was none."""
    name = serving_container(port)
    if shutil.which("docker") is None or docker("inspect", name, check=False, timeout=30).returncode != 0:
        return None
    docker("stop", "--time", str(STOP_TIMEOUT_SECONDS), name, check=False, timeout=STOP_TIMEOUT_SECONDS + 30)
    docker("rm", "-f", name, check=False, timeout=60)
    return f"the model server container on port {port}"


if __name__ == "__main__":  # python -m launcher.local.docker: is the image ready to run here?
    problem = engine_problem()
    print(problem or f"{configured_image()}: {'available' if image_exists(configured_image()) else 'not built'}")
    sys.exit(0 if image_available() else 1)
