"""Several emulated SageMaker hosts on this machine, for `train --local process --instance-count N`.

Each host gets its own `/opt/ml` tree, as on SageMaker: algo-1 uses the job's folder
(`local_jobs/<job>/`, where the model and the report are looked for), algo-2... use
`local_jobs/<job>/hosts/algo-N/`. Each tree's `resourceconfig.json` names all hosts and its own, and each
host runs the toolkit's `train` with the image's framework module, which starts torchrun (master algo-1,
port 7777).

As processes (`--local process`), the host names resolve to 127.0.0.1 for these processes only: each
runs in a private mount namespace where a copy of /etc/hosts that maps them is mounted over /etc/hosts
(the machine's file is not touched), and gloo talks over the loopback interface. In the image
(`--local docker`), each host is a container named algo-N on a docker network of the job's own.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from image_classifier.contract import TRAINING_MODULE_ENV

from . import LauncherError, docker_image, docker_runner
from .local_training import _wait_group, prepare_job, process_environment

HOSTS_FOLDER = "hosts"
FRAMEWORK_MODULE = "image_classifier.toolkit_entry:main"  # also set in docker/Dockerfile
LOOPBACK_INTERFACE = "lo"  # processes on this machine
CONTAINER_INTERFACE = "eth0"  # a container's interface on its docker network, as on SageMaker
HOSTS_FILE = "etc-hosts"  # the mapped copy of /etc/hosts, in the first host's input/config
# After one host fails, the others get this long to fail on their own (collective errors) before SIGTERM,
# then as long again before SIGKILL.
FAILED_HOST_GRACE_SECONDS = 60


def host_names(count):
    return [f"algo-{i}" for i in range(1, count + 1)]


def prepare_hosts(jobs_dir, name, channels, hyperparameters, count, interface=LOOPBACK_INTERFACE):
    """One LocalJob per host, the first host's first; (re)writes each host's resourceconfig.json."""
    hosts = host_names(count)
    master = prepare_job(jobs_dir, name, channels, hyperparameters)
    jobs = [master] + [prepare_job(master.dir / HOSTS_FOLDER, host, channels, hyperparameters) for host in hosts[1:]]
    for job, host in zip(jobs, hosts):
        job.paths.resource_config.write_text(json.dumps(
            {"current_host": host, "hosts": hosts, "network_interface_name": interface}))
    return jobs


def host_environment(job):
    env = process_environment(job)
    env.update({
        TRAINING_MODULE_ENV: FRAMEWORK_MODULE,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # torchrun, like the image
        "GLOO_SOCKET_IFNAME": LOOPBACK_INTERFACE,
    })
    return env


def loopback_command(command, hosts, hosts_file):
    """`command` in a private mount namespace where `hosts` resolve to 127.0.0.1."""
    if shutil.which("unshare") is None:
        raise LauncherError("`unshare` (util-linux) is needed to emulate several hosts on this machine.")
    real = Path("/etc/hosts").read_text() if Path("/etc/hosts").is_file() else ""
    Path(hosts_file).write_text(real.rstrip("\n") + "\n127.0.0.1 " + " ".join(hosts) + "\n")
    user = [] if os.getuid() == 0 else ["--map-root-user"]
    return ["unshare", *user, "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file), *command]


def process_commands(jobs):
    """(command, environment) per host: the toolkit's `train` of this Python's environment."""
    train = Path(sys.executable).parent / "train"
    if not train.exists():
        raise LauncherError(f"{train} not found: run `make setup` (it installs sagemaker-training).")
    hosts = host_names(len(jobs))
    hosts_file = jobs[0].paths.config / HOSTS_FILE
    command = loopback_command([str(train)], hosts, hosts_file) if len(jobs) > 1 else [str(train)]
    return [(command, host_environment(job)) for job in jobs]


def docker_network(jobs):
    """The docker network the hosts' containers share (named after the job's folder, like the containers)."""
    return f"{docker_runner.training_container(jobs[0])}-net"


def docker_commands(jobs, image):
    """(command, None) per host: `docker run IMAGE train` with the host's tree at /opt/ml, its name as host
    name and network alias on the job's own docker network (docker's DNS resolves algo-1, algo-2)."""
    network = docker_network(jobs)
    commands = []
    for job, host in zip(jobs, host_names(len(jobs))):
        command = docker_runner.training_command(job, image)
        command[command.index("--hostname") + 1] = host
        at = command.index(image)
        commands.append((command[:at] + ["--network", network, "--network-alias", host] + command[at:], None))
    return commands


def run_docker_hosts(jobs, image=None, echo=True):
    """Each host as a container of the image on a docker network of its own, as SageMaker runs them."""
    image = docker_image.require_image(image)
    network = docker_network(jobs)
    docker_image.docker("network", "create", network, timeout=60)
    try:
        print(f"local mode: docker ({image}), {len(jobs)} containers on network {network}")
        return run_hosts(jobs, docker_commands(jobs, image), echo)
    finally:
        docker_image.docker("network", "rm", network, check=False, timeout=60)


def run_hosts(jobs, commands=None, echo=True):
    """Start every host at once (default: `process_commands`); the first host's output goes to the terminal,
    each host's to its train.log. Returns the first host's exit code (another's where the first succeeded)."""
    processes = []
    for job, (command, env) in zip(jobs, commands or process_commands(jobs)):
        log = open(job.log_file, "ab")
        output = subprocess.PIPE if echo and job is jobs[0] else log
        processes.append((subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True), log))
    previous = signal.signal(signal.SIGTERM, lambda *_: _signal_all(processes, signal.SIGTERM))
    try:
        first, log = processes[0]
        if first.stdout is not None:
            for line in first.stdout:
                log.write(line)
                log.flush()
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        return _wait_all(processes)
    except KeyboardInterrupt:
        _signal_all(processes, signal.SIGTERM)
        _wait_all(processes)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process, log in processes:
            log.close()


def _signal_all(processes, signum):
    for process, _ in processes:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass


def _wait_all(processes):
    """Wait for every host; once one failed, the rest get a grace period, then SIGTERM, then SIGKILL."""
    failed_at, signum = None, signal.SIGTERM
    while True:
        codes = [process.poll() for process, _ in processes]
        if all(code is not None for code in codes):
            break
        if failed_at is None and any(code for code in codes if code is not None):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > FAILED_HOST_GRACE_SECONDS:
            _signal_all(processes, signum)
            failed_at, signum = time.monotonic(), signal.SIGKILL
        time.sleep(0.2)
    for process, _ in processes:  # the toolkit may exit before its script: wait for each process group
        _wait_group(process.pid)
    return codes[0] or next((code for code in codes if code), 0)
