"""The image on this machine: the docker engine check, which local image to run, and a cached build.

`build_and_push.sh` is the user's way to build (and push) the image; it records the image's URI in
`.image-uri`, which `configured_image()` reads. Tests and CI use `ensure_image()`: its tag carries a
hash of everything that goes into the image, so an unchanged tree is never built twice.
"""
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import IMAGE_NAME, PROJECT_DIR, LauncherError, recorded_image_uri

DEFAULT_IMAGE = f"{IMAGE_NAME}:latest"
DOCKERFILE = PROJECT_DIR / "docker" / "Dockerfile"
# The offline base made by scripts/make_base_image.sh; `BASE_IMAGE` in the environment wins over it.
BASE_IMAGE_ENV = "BASE_IMAGE"
OFFLINE_BASE_IMAGE = "image-classifier-base:bookworm"
# What goes into the image (the .dockerignore allow-list): hashed for the cached tag. The image installs
# requirements-image.lock only; the development lock (requirements.lock) does not enter it.
IMAGE_INPUTS = ("docker/Dockerfile", ".dockerignore", "requirements-image.lock", "docker/code",
                "docker/entrypoint.sh", "container_src")
_IGNORED_PARTS = {"__pycache__", "build"}
# Free disk a build needs: the image is ~8 GB and a build holds several GB more for a while.
BUILD_FREE_BYTES = 15 * 10**9


def docker(*args, check=True, capture=True, timeout=None):
    """Run the docker CLI; returns the CompletedProcess."""
    return subprocess.run(["docker", *args], check=check, text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)


def engine_problem():
    """None when a docker engine answers, else why not (one line, for skips and errors)."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed (Debian: apt-get install docker.io)"
    try:
        result = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20)
    except subprocess.TimeoutExpired:
        return "the docker engine does not answer (`docker version` timed out)"
    if result.returncode != 0:
        last_line = (result.stdout.strip().splitlines() or ["docker version failed"])[-1]
        return f"no docker engine is running ({last_line})"
    return None


def docker_root():
    """The engine's data folder (where images are stored), for the disk check."""
    result = docker("info", "--format", "{{.DockerRootDir}}", check=False, timeout=20)
    root = result.stdout.strip() if result.returncode == 0 else ""
    return Path(root) if root and Path(root).exists() else Path("/var/lib/docker" if Path("/var/lib/docker").exists() else "/")


def image_exists(image):
    return docker("image", "inspect", image, check=False, timeout=60).returncode == 0


def configured_image():
    """The image the launcher runs: the one build_and_push.sh recorded, else `image-classifier:latest`."""
    return recorded_image_uri() or DEFAULT_IMAGE


def image_available(image=None):
    """True when an engine runs and the image is on this machine (what `--local auto` asks)."""
    return engine_problem() is None and image_exists(image or configured_image())


def require_image(image=None):
    """The image to run, or a LauncherError that says how to get it."""
    image = image or configured_image()
    problem = engine_problem()
    if problem:
        raise LauncherError(f"Cannot run the image: {problem}.")
    if not image_exists(image):
        raise LauncherError(f"The image {image} is not on this machine: build it with `./build_and_push.sh --no-push`.")
    return image


def default_build_args():
    """Build args for tests/CI: the base from $BASE_IMAGE, else the offline base when it exists."""
    base = os.environ.get(BASE_IMAGE_ENV) or (OFFLINE_BASE_IMAGE if image_exists(OFFLINE_BASE_IMAGE) else None)
    return {"BASE_IMAGE": base} if base else {}


def _input_files():
    for name in IMAGE_INPUTS:
        path = PROJECT_DIR / name
        if path.is_file():
            yield path
        else:
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(PROJECT_DIR).parts
                if file.is_file() and not _IGNORED_PARTS & set(relative) and not any(
                        part.endswith(".egg-info") for part in relative) and file.suffix != ".pyc":
                    yield file


def content_hash(build_args):
    """A hash of the files that go into the image and the build args: equal hashes, equal images."""
    digest = hashlib.sha256()
    for file in _input_files():
        digest.update(str(file.relative_to(PROJECT_DIR)).encode() + b"\0" + file.read_bytes() + b"\0")
    for key, value in sorted(build_args.items()):
        digest.update(f"{key}={value}\0".encode())
    return digest.hexdigest()[:12]


def cached_tag(build_args):
    return f"{IMAGE_NAME}:src-{content_hash(build_args)}"


def build(tag, build_args, log_file):
    """`docker build` from the repository root, output to `log_file`; LauncherError with its tail on failure."""
    command = ["build", "-f", str(DOCKERFILE), "-t", tag]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_file, "w") as log:
        result = subprocess.run(["docker", *command, str(PROJECT_DIR)], stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise LauncherError(f"docker build of {tag} failed (exit {result.returncode}; log {log_file}):\n{tail}")
    return time.monotonic() - started


def ensure_image(build_args=None, log_file=None):
    """The content-hashed image, built only when no image of this exact tree exists yet; returns its tag."""
    build_args = default_build_args() if build_args is None else build_args
    tag = cached_tag(build_args)
    if not image_exists(tag):
        seconds = build(tag, build_args, log_file or PROJECT_DIR / "build" / "docker-build.log")
        print(f"built {tag} in {seconds:.0f} s")
        remove_stale_images(keep=tag)
    return tag


def remove_stale_images(keep):
    """Untag earlier content-hashed builds (each may pin several GB); failures (an image in use) are fine."""
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME, check=False, timeout=60).stdout
    stale = [ref for ref in listed.split() if ref.startswith(f"{IMAGE_NAME}:src-") and ref != keep]
    if stale:
        docker("rmi", *stale, check=False, timeout=300)


if __name__ == "__main__":  # python -m launcher.docker_image: build (or find) the cached image
    print(ensure_image())
