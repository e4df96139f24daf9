"""The serving settings (settings.py): defaults, checks at start, and the MMS config serve writes from them."""
import functools
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import botocore
import pytest

from image_classifier import contract
from image_classifier.serving import serve, settings

SERVE = Path(sys.executable).parent / "serve"


def test_defaults():
    served = settings.load({}, gpus=0, cores=2, load_seconds=5)
    assert (served.port, served.bind_address, served.workers, served.torch_threads) == (8080, "0.0.0.0", 2, 2)
    assert served.cores_shared and served.narrow_threads == 1
    assert (served.payload_cap_mb, served.max_pixels, served.pixel_budget) == (6, 50_000_000, 100_000_000)
    assert (served.max_batch, served.forward_batch, served.top_k, served.optimize) == (None, 16, 5, True)
    assert (served.batch_seconds, served.timeout_seconds, served.workerless_seconds) == (15, 60, 45)
    assert served.server_user == "model-server"
    assert settings.load({}, load_seconds=40).workerless_seconds == 95  # a slow reload gets longer
    assert settings.load({settings.MAX_BATCH_ENV: "7", settings.WORKERLESS_SECONDS_ENV: "5"}).max_batch == 7
    assert settings.load({}, gpus=4, cores=16).workers == 4


@pytest.mark.parametrize("gpus, cores, workers, threads, shared", [
    (0, 1, 1, 1, False), (0, 2, 2, 2, True), (0, 3, 3, 3, True), (0, 16, 16, 16, True), (4, 16, 4, 4, False),
    (8, 4, 8, 1, False)])
def test_default_cpu_workers_one_per_core_sharing_the_cores(gpus, cores, workers, threads, shared):
    served = settings.load({}, gpus=gpus, cores=cores)
    assert (served.workers, served.torch_threads, served.cores_shared) == (workers, threads, shared)
    assert served.narrow_threads == (1 if gpus == 0 else threads)


@pytest.mark.parametrize("cores, workers, threads", [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 2), (16, 8, 2)])
def test_without_sharing_each_worker_gets_two_cores(cores, workers, threads):
    served = settings.load({settings.SHARE_CORES_ENV: "false"}, cores=cores)
    assert (served.workers, served.torch_threads, served.cores_shared) == (workers, threads, False)


def test_a_fixed_thread_count_is_shared_down_to_the_workers_share():
    served = settings.load({settings.WORKERS_ENV: "2", settings.TORCH_THREADS_ENV: "4"}, cores=8)
    assert (served.torch_threads, served.narrow_threads, served.cores_shared) == (4, 4, False)
    served = settings.load({settings.WORKERS_ENV: "4", settings.TORCH_THREADS_ENV: "8"}, cores=8)
    assert (served.torch_threads, served.narrow_threads, served.cores_shared) == (8, 2, True)


def test_overrides():
    served = settings.load({settings.WORKERS_ENV: "3", settings.TORCH_THREADS_ENV: "2", settings.TOP_K_ENV: "7",
                            settings.PIXEL_BUDGET_ENV: "200_000_000", settings.OPTIMIZE_ENV: "false",
                            contract.BIND_ADDRESS_ENV: "127.0.0.1"}, cores=8)
    assert (served.workers, served.torch_threads, served.top_k, served.pixel_budget) == (3, 2, 7, 200_000_000)
    assert served.optimize is False and served.address == "http://127.0.0.1:8080"


@pytest.mark.parametrize("name, value, words", [
    (settings.TOP_K_ENV, "0", "must be between 1 and 1,000"), (settings.TOP_K_ENV, "five", "is not an integer"),
    (settings.MAX_BATCH_ENV, "-3", "must be at least 1"), (settings.MAX_PIXELS_ENV, "1e6", "is not an integer"),
    (settings.PIXEL_BUDGET_ENV, "0", "must be at least 1"), (settings.WORKERS_ENV, "0", "must be between 1 and 256"),
    (settings.TORCH_THREADS_ENV, "many", "is not an integer"), (contract.PORT_ENV, "40000", "must be between 1 and 32,766"),
    (contract.PAYLOAD_CAP_ENV, "500", "must be between 1 and 100"), (settings.TIMEOUT_ENV, "0", "must be at least 1"),
    (settings.FORWARD_BATCH_ENV, "x", "is not an integer"), (settings.OPTIMIZE_ENV, "maybe", "must be true or false"),
])
def test_a_bad_setting_is_named(name, value, words):
    with pytest.raises(settings.SettingsError) as error:
        settings.load({name: value})
    assert f"{name}={value!r} {words}" in str(error.value)


def test_every_bad_setting_is_listed_at_once():
    with pytest.raises(settings.SettingsError) as error:
        settings.load({settings.TOP_K_ENV: "0", settings.WORKERS_ENV: "x", settings.MAX_PIXELS_ENV: ""})
    assert settings.TOP_K_ENV in str(error.value) and settings.WORKERS_ENV in str(error.value)


def test_a_budget_below_the_picture_cap_is_refused():
    with pytest.raises(settings.SettingsError, match="could never be served"):
        settings.load({settings.PIXEL_BUDGET_ENV: "1000", settings.MAX_PIXELS_ENV: "2000"})


def test_the_payload_cap_is_sagemaker_s_invoke_endpoint_limit():
    """SageMaker's front end refuses InvokeEndpoint bodies over this size itself (413) before they reach
    the container; the service model in botocore says what the size is."""
    model_file = Path(botocore.__file__).parent / "data" / "sagemaker-runtime" / "2017-05-13" / "service-2.json.gz"
    service = json.loads(gzip.decompress(model_file.read_bytes()))
    assert service["shapes"]["BodyBlob"]["max"] == settings.load({}).payload_cap_bytes == 6 * 1024 * 1024


@pytest.mark.parametrize("name, value", [(settings.TOP_K_ENV, "0"), (settings.MAX_BATCH_ENV, "lots"),
                                         (settings.MAX_PIXELS_ENV, "-1"), (settings.PIXEL_BUDGET_ENV, "0"),
                                         (settings.WORKERS_ENV, "0"), (settings.TORCH_THREADS_ENV, "0")])
def test_serve_refuses_to_start_on_a_bad_setting(tmp_path, name, value):
    """Checked before the model loads and before Java starts: no server that answers /ping but fails."""
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(tmp_path), **{name: value})
    result = subprocess.run([str(SERVE)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("serve: invalid serving settings:") and f"{name}={value!r}" in result.stderr


def test_the_mms_config_keeps_the_management_api_off_tcp(tmp_path):
    server = serve.Server(tmp_path / "model", 0, settings.load({contract.BIND_ADDRESS_ENV: "127.0.0.1"}), tmp_path)
    properties = dict(line.split("=", 1) for line in serve.mms_properties(server).splitlines())
    assert properties["inference_address"] == "http://127.0.0.1:8080"
    assert properties["management_address"] == f"unix:{tmp_path / 'management.sock'}"
    assert properties["use_native_io"] == "true"
    # The handler refuses bodies over the cap with a JSON 413; MMS cuts only far above it.
    assert int(properties["max_request_size"]) == 4 * 6 * 1024 * 1024


def test_a_local_docker_deploy_passes_this_shell_s_serving_settings(monkeypatch):
    from launcher.local import docker as local_docker

    monkeypatch.setattr(local_docker, "gpu_args", lambda: [])
    command = local_docker.serving_command("c", 28080, "/m", "img", environ={
        settings.PIXEL_BUDGET_ENV: "2000000", contract.PORT_ENV: "9999", "HOME": "/root"})
    assert command[-2:] == ["img", "serve"] and "127.0.0.1:28080:8080" in command
    assert f"{settings.PIXEL_BUDGET_ENV}=2000000" in command
    assert not any(arg.startswith((contract.PORT_ENV, "HOME")) for arg in command)


def test_serve_gives_workers_that_share_the_cores_their_lock_folder(tmp_path):
    shared = serve.Server(tmp_path / "model", 0, settings.load({}, cores=2), tmp_path)
    assert serve.mms_environment(shared)[settings.CORE_SHARE_DIR_ENV] == str(tmp_path)
    fixed = serve.Server(tmp_path / "model", 0, settings.load({settings.SHARE_CORES_ENV: "false"}, cores=2), tmp_path)
    assert settings.CORE_SHARE_DIR_ENV not in serve.mms_environment(fixed)


# ------------------------------------------------------------------------- every value, every bound
def test_every_setting_is_read_from_its_variable():
    env = {contract.PORT_ENV: "9090", contract.BIND_ADDRESS_ENV: "127.0.0.1", settings.SHARE_CORES_ENV: "no",
           settings.MEMORY_ENV: "8192", settings.WORKERS_ENV: "3", settings.TORCH_THREADS_ENV: "2",
           settings.TIMEOUT_ENV: "120", contract.PAYLOAD_CAP_ENV: "10", settings.MAX_PIXELS_ENV: "1000",
           settings.PIXEL_BUDGET_ENV: "2000", settings.MAX_BATCH_ENV: "8", settings.BATCH_SECONDS_ENV: "5",
           settings.FORWARD_BATCH_ENV: "4", settings.TOP_K_ENV: "3", settings.OPTIMIZE_ENV: "0",
           settings.WORKERLESS_SECONDS_ENV: "30", settings.ENGINE_ENV: "OpenVINO", settings.ENGINE_TOLERANCE_ENV: "0.05",
           settings.JVM_ARGS_ENV: "-Xmx1g", settings.SERVER_USER_ENV: "nobody"}
    assert settings.load(env, cores=8, memory_mib=16384) == settings.ServingSettings(
        port=9090, bind_address="127.0.0.1", workers=3, torch_threads=2, timeout_seconds=120, payload_cap_mb=10,
        max_pixels=1000, pixel_budget=2000, max_batch=8, batch_seconds=5, forward_batch=4, top_k=3, optimize=False,
        engine="openvino", engine_tolerance=0.05, jvm_args="-Xmx1g", share_cores=False, narrow_threads=2,
        workerless_seconds=30, server_user="nobody", memory_mib=8192, memory_source=settings.MEMORY_ENV)


def test_every_default():
    assert settings.load({}, cores=4, memory_mib=8192) == settings.ServingSettings(
        port=8080, bind_address="0.0.0.0", workers=4, torch_threads=4, timeout_seconds=60, payload_cap_mb=6,
        max_pixels=50_000_000, pixel_budget=100_000_000, max_batch=None, batch_seconds=15, forward_batch=16, top_k=5,
        optimize=True, engine="auto", engine_tolerance=0.01, jvm_args="-XX:+UseContainerSupport -Xmx512m",
        share_cores=True, narrow_threads=1, workerless_seconds=45, server_user="model-server", memory_mib=8192,
        memory_source="given")


@pytest.mark.parametrize("name, field, lowest, highest", [
    (contract.PORT_ENV, "port", 1, 32766), (settings.WORKERS_ENV, "workers", 1, 256),
    (settings.TORCH_THREADS_ENV, "torch_threads", 1, 256), (contract.PAYLOAD_CAP_ENV, "payload_cap_mb", 1, 100),
    (settings.TOP_K_ENV, "top_k", 1, 1000), (settings.MEMORY_ENV, "memory_mib", 256, None),
    (settings.TIMEOUT_ENV, "timeout_seconds", 1, None), (settings.FORWARD_BATCH_ENV, "forward_batch", 1, None),
])
def test_each_bound_is_inclusive(name, field, lowest, highest):
    for value in (lowest, highest or 10**9):
        assert getattr(settings.load({name: str(value)}, cores=2, memory_mib=1 << 40), field) == value
    limit = f"between {lowest:,} and {highest:,}" if highest else f"at least {lowest:,}"
    for value in (lowest - 1, *([highest + 1] if highest else [])):
        with pytest.raises(settings.SettingsError) as error:
            settings.load({name: str(value)}, cores=2, memory_mib=1 << 40)
        assert str(error.value) == f"invalid serving settings: {name}='{value}' must be {limit}"


def test_every_bad_setting_is_named_in_one_message_and_the_rest_follow_the_defaults():
    """A bad worker count still leaves threads to derive; the pixel budget is compared only with a valid cap."""
    bad = {settings.WORKERS_ENV: "x", settings.TOP_K_ENV: "0", settings.MAX_PIXELS_ENV: "y",
           settings.PIXEL_BUDGET_ENV: "1000", settings.ENGINE_ENV: "fast", settings.SHARE_CORES_ENV: "off"}
    for share in ("true", "false"):
        with pytest.raises(settings.SettingsError) as error:
            settings.load({**bad, settings.SHARE_CORES_ENV: share}, cores=4)
        assert str(error.value) == (
            f"invalid serving settings: {settings.WORKERS_ENV}='x' is not an integer; {settings.MAX_PIXELS_ENV}='y' "
            f"is not an integer; {settings.TOP_K_ENV}='0' must be between 1 and 1,000; {settings.ENGINE_ENV}='fast' "
            "must be one of auto, torch, openvino, openvino-int8")


def test_the_pixel_budget_may_equal_the_picture_cap_but_not_fall_below_it():
    assert settings.load({settings.PIXEL_BUDGET_ENV: "2000", settings.MAX_PIXELS_ENV: "2000"}, cores=2).pixel_budget == 2000
    with pytest.raises(settings.SettingsError) as error:
        settings.load({settings.PIXEL_BUDGET_ENV: "1999", settings.MAX_PIXELS_ENV: "2_000"}, cores=2)
    assert str(error.value) == (f"invalid serving settings: {settings.PIXEL_BUDGET_ENV}=1,999 is below "
                                f"{settings.MAX_PIXELS_ENV}=2,000: a picture under the per-picture cap could never be served")


# ------------------------------------------------------------------------------- the readers
ENGINE_CHOICE = functools.partial(settings.env_choice, choices=settings.ENGINES)


@pytest.mark.parametrize("read, default, value, expected", [
    (settings.env_int, 7, " 12 ", 12), (settings.env_int, 7, "1", 1), (settings.env_int, 7, "3_000", 3000),
    (settings.env_int, 7, " ", 7), (settings.env_int, 7, None, 7),
    (settings.env_bool, True, "false", False), (settings.env_bool, False, "  ", False), (settings.env_bool, True, None, True),
    (settings.env_float, 0.01, "0.5", 0.5), (settings.env_float, 0.01, "1e-3", 0.001), (settings.env_float, 0.01, "", 0.01),
    (settings.env_float, 0.01, None, 0.01),
    (ENGINE_CHOICE, "auto", "Torch", "torch"), (ENGINE_CHOICE, "auto", None, "auto"),
])
def test_the_readers_take_the_process_environment_by_default(monkeypatch, read, default, value, expected):
    if value is None:
        monkeypatch.delenv("IMAGE_CLASSIFIER_TEST_SETTING", raising=False)
    else:
        monkeypatch.setenv("IMAGE_CLASSIFIER_TEST_SETTING", value)
    assert read("IMAGE_CLASSIFIER_TEST_SETTING", default) == expected
    assert read("IMAGE_CLASSIFIER_TEST_SETTING", default, environ={}) == default  # a given environment only


def test_load_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv(settings.TOP_K_ENV, "9")
    monkeypatch.setenv(contract.BIND_ADDRESS_ENV, "127.0.0.2")
    served = settings.load(cores=2, memory_mib=4096)
    assert (served.top_k, served.bind_address) == (9, "127.0.0.2")


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("TRUE", True), (" Yes ", True), ("1", True), ("false", False), ("False", False), ("no", False),
    ("NO", False), ("0", False)])
def test_booleans_in_any_case(value, expected):
    assert settings.env_bool("X", not expected, environ={"X": value}) is expected


def test_choices_in_any_case():
    assert settings.env_choice("X", "auto", settings.ENGINES, environ={"X": " OpenVINO-INT8 "}) == "openvino-int8"
    assert settings.env_choice("X", "auto", settings.ENGINES, environ={"X": ""}) == "auto"
    assert settings.load({settings.ENGINE_ENV: "Torch"}, cores=2).engine == "torch"


@pytest.mark.parametrize("read, value, words", [
    (settings.env_int, "1__000", "is not an integer"), (settings.env_int, "0", "must be at least 1"),
    (settings.env_float, "0", "must be above 0.0"), (settings.env_float, "-1", "must be above 0.0"),
    (settings.env_float, "nan", "must be above 0.0"), (settings.env_float, "1%", "is not a number"),
])
def test_the_readers_name_a_bad_value(read, value, words):
    with pytest.raises(ValueError) as error:
        read("X", 1, environ={"X": value})
    assert str(error.value) == f"X={value!r} {words}"


def test_the_engine_tolerance_is_read_and_checked():
    assert settings.load({settings.ENGINE_TOLERANCE_ENV: "0.2"}, cores=2).engine_tolerance == 0.2
    with pytest.raises(settings.SettingsError, match="IMAGE_CLASSIFIER_ENGINE_TOLERANCE='0' must be above 0.0"):
        settings.load({settings.ENGINE_TOLERANCE_ENV: "0"}, cores=2)


# ------------------------------------------------------------------------------ derived defaults
def test_timeouts_grow_with_a_slow_model_load():
    assert (lambda s: (s.timeout_seconds, s.workerless_seconds))(settings.load({}, cores=2, load_seconds=5)) == (60, 45)
    slow = settings.load({}, cores=2, load_seconds=40.2)  # 3 x 40.2 + 30 and 2 x 40.2 + 15, rounded up
    assert (slow.timeout_seconds, slow.workerless_seconds) == (151, 96)


def test_threads_split_the_cores_without_sharing():
    assert settings.default_threads(4, 2) == 2 and settings.default_threads(3, 2) == 1
    assert settings.default_threads(4, 2, share_cores=True) == 4
    assert settings.default_workers(1, 8) == 1 and settings.default_workers(0, 3, share_cores=False) == 1
    served = settings.load({settings.WORKERS_ENV: "2"}, cores=3)  # 3 cores, 2 workers: 1 thread each when busy
    assert (served.torch_threads, served.narrow_threads) == (3, 1) and isinstance(served.narrow_threads, int)
    one_gpu = settings.load({}, gpus=1, cores=4)
    assert (one_gpu.workers, one_gpu.torch_threads, one_gpu.share_cores) == (1, 4, False)
