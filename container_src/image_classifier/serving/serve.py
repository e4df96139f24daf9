"""`serve`: SageMaker's serving entry point (`docker run IMAGE serve`).

1. Loads the artifact once: MMS answers /ping with 200 even when every worker fails to load the
   model, so a broken artifact must stop here, with a clear message and a non-zero exit.
2. Writes the multi-model-server config (workers, threads, timeout, payload cap, port) into a private
   runtime folder, not /etc: it works where /etc or /opt/ml is read-only, and with its own pid file
   and worker sockets (both follow the temp folder) it does not collide with another MMS on the host.
3. Runs MMS in the foreground, in its own process group, with the sagemaker-inference handler
   service; SIGTERM or Ctrl-C stops the whole group (frontend and every worker), then serve exits 0.

The toolkit's `start_model_server` is not used: it writes to /etc, finds "its" server by scanning every
process on the host (so it refuses to run beside another MMS) and stops only the Java frontend.
"""
import importlib.resources
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import constants
from ..cuda_check import GpuUnusableError, require_usable_gpu
from . import settings

log = logging.getLogger("serve")


class ServeError(Exception):
    """serve cannot start; the message says why."""


@dataclass(frozen=True)
class ServerSettings:
    model_dir: Path
    port: int
    bind_address: str
    gpus: int
    workers: int
    torch_threads: int
    timeout_seconds: int
    payload_cap_mb: int
    jvm_args: str

    @property
    def address(self):
        return f"http://{self.bind_address}:{self.port}"


def check_artifact(model_dir):
    """Load the model once; returns (seconds it took, gpus). Raises ServeError if it is broken."""
    import torch  # here, so `serve --help`-style failures stay fast

    from ..model import ArtifactError, load_artifact

    if not Path(model_dir).is_dir():
        raise ServeError(f"No model folder at {model_dir}: SageMaker unpacks model.tar.gz there "
                         f"(set {constants.BASE_DIR_ENV} to serve a local /opt/ml-shaped folder).")
    started = time.monotonic()
    try:
        model, config = load_artifact(model_dir)
    except ArtifactError as error:
        raise ServeError(f"The model artifact is broken: {error}") from None
    del model
    log.info("Artifact OK: %s, %d classes, %d px", config.arch, config.num_classes, config.image_size)
    return time.monotonic() - started, torch.cuda.device_count()


def resolve_settings(model_dir, load_seconds, gpus, environ=None):
    env = os.environ if environ is None else environ
    try:
        cores = settings.cpu_count()
        workers = settings.env_int(settings.WORKERS_ENV, settings.default_workers(gpus, cores), environ=env)
        return ServerSettings(
            model_dir=Path(model_dir),
            port=settings.env_int(settings.PORT_ENV, settings.DEFAULT_PORT, environ=env,
                                  maximum=settings.MAX_PORT),
            bind_address=env.get(settings.BIND_ADDRESS_ENV) or settings.DEFAULT_BIND_ADDRESS,
            gpus=gpus,
            workers=workers,
            torch_threads=settings.env_int(settings.TORCH_THREADS_ENV,
                                           settings.threads_per_worker(cores, workers), environ=env),
            timeout_seconds=settings.env_int(settings.TIMEOUT_ENV, settings.response_timeout(load_seconds),
                                             environ=env),
            payload_cap_mb=settings.env_int(settings.PAYLOAD_CAP_ENV, settings.DEFAULT_PAYLOAD_CAP_MB,
                                            environ=env),
            jvm_args=env.get(settings.JVM_ARGS_ENV) or settings.DEFAULT_JVM_ARGS,
        )
    except ValueError as error:
        raise ServeError(str(error)) from None


def mms_properties(server):
    """The MMS config: the toolkit's defaults plus the settings (same keys the toolkit writes)."""
    lines = {
        "enable_envvars_config": "true",
        "decode_input_request": "false",  # bodies reach the handler as bytes
        "load_models": "ALL",
        "default_service_handler": settings.HANDLER_SERVICE,
        "default_workers_per_model": server.workers,
        "default_response_timeout_seconds": server.timeout_seconds,
        "inference_address": server.address,
        "management_address": server.address,
        "max_request_size": server.payload_cap_mb * 1024 * 1024,
        "vmargs": server.jvm_args,
    }
    if server.gpus:
        lines["number_of_gpu"] = server.gpus
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def mms_command(server, config_file):
    log_config = importlib.resources.files("sagemaker_inference") / "etc" / "log4j2.xml"
    return [str(Path(sys.executable).parent / "multi-model-server"), "--start", "--foreground",
            "--model-store", "/", "--mms-config", str(config_file), "--log-config", str(log_config),
            "--models", f"model={server.model_dir}"]


def mms_environment(server, runtime_dir):
    env = dict(os.environ)
    env.update({
        "TEMP": str(runtime_dir),  # java.io.tmpdir: the workers' unix sockets
        "TMPDIR": str(runtime_dir),  # MMS's pid file
        "LOG_LOCATION": str(runtime_dir / "logs"),
        "METRICS_LOCATION": str(runtime_dir / "logs"),
        settings.TORCH_THREADS_ENV: str(server.torch_threads),
        "OMP_NUM_THREADS": str(server.torch_threads),
        "MKL_NUM_THREADS": str(server.torch_threads),
    })
    return env


def stop_group(process, grace=settings.STOP_GRACE_SECONDS):
    """SIGTERM the model server's process group, SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            process.poll()  # reap the launcher so its zombie does not keep the group alive
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
    process.poll()


def java_available():
    java_home = os.environ.get("JAVA_HOME")
    return Path(java_home, "bin", "java").exists() if java_home else shutil.which("java") is not None


def run(environ=None):
    env = os.environ if environ is None else environ
    model_dir = Path(env.get(constants.BASE_DIR_ENV, constants.DEFAULT_BASE_DIR)) / "model"
    require_usable_gpu(env)  # GPUs that torch cannot use: fail now, not serve slowly from the CPU
    if not java_available():
        raise ServeError("Java was not found: multi-model-server needs a Java 17 runtime "
                         "(Debian: apt-get install openjdk-17-jre-headless, or set JAVA_HOME).")
    load_seconds, gpus = check_artifact(model_dir)
    server = resolve_settings(model_dir, load_seconds, gpus, env)
    runtime_root = env.get(settings.RUNTIME_DIR_ENV) or None
    runtime_dir = Path(tempfile.mkdtemp(prefix="image-classifier-serve-", dir=runtime_root))
    config_file = runtime_dir / "mms.properties"
    config_file.write_text(mms_properties(server))
    log.info("Starting multi-model-server on %s: %d worker(s) x %d torch thread(s), timeout %d s, "
             "payload cap %d MB, runtime folder %s", server.address, server.workers, server.torch_threads,
             server.timeout_seconds, server.payload_cap_mb, runtime_dir)
    process = subprocess.Popen(mms_command(server, config_file), env=mms_environment(server, runtime_dir),
                               cwd=runtime_dir, start_new_session=True)
    stopping, keep_logs = [], []

    def on_signal(signum, _frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        exit_code = process.wait()
        log.error("multi-model-server exited on its own (code %s); see %s", exit_code, runtime_dir / "logs")
        keep_logs.append(True)
        return exit_code or 1
    except KeyboardInterrupt:
        log.info("Stopping the model server (%s)", signal.Signals(stopping[0]).name if stopping else "SIGINT")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_group(process)
        if not keep_logs:
            shutil.rmtree(runtime_dir, ignore_errors=True)


def main(argv=None):
    """Console script `serve` (SageMaker passes the word `serve`; nothing else is read from argv)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s serve %(levelname)s %(message)s", stream=sys.stdout)
    try:
        sys.exit(run())
    except (ServeError, GpuUnusableError) as error:
        print(f"serve: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
