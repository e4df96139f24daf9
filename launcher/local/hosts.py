"""Several emulated SageMaker hosts on this machine, for `train --local --instance-count N`.

Each host gets its own `/opt/ml` tree, as on SageMaker: algo-1 uses the job's folder
(`local_jobs/<job>/`, where the model and the report are looked for), algo-2... use
`local_jobs/<job>/hosts/algo-N/`. Each tree's `resourceconfig.json` names all hosts and its own, and each
host runs the toolkit's `train` with the image's framework module, which starts torchrun (master algo-1,
port 7777). How the host names resolve is the backend's part: `process.host_commands` (loopback, in a
private mount namespace) or `docker.host_commands` (a docker network of the job's own).
"""
import signal
import subprocess
import time

from image_classifier import contract

from .processes import echo_raw, signal_tree, wait_tree
from .trees import prepare_job, write_resource_config

HOSTS_FOLDER = "hosts"
FRAMEWORK_MODULE = contract.TRAINING_MODULE  # also set in docker/Dockerfile
LOOPBACK_INTERFACE = "lo"  # processes on this machine
CONTAINER_INTERFACE = "eth0"  # a container's interface on its docker network, as on SageMaker
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
        write_resource_config(job, host, hosts, interface)
    return jobs


def run_hosts(jobs, commands, echo=True):
    """Start every host's (command, environment) at once; the first host's output goes to the terminal,
    each host's to its train.log. Returns the first host's exit code (another's where the first succeeded)."""
    processes = []
    for job, (command, env) in zip(jobs, commands):
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
                (echo_raw if echo is True else echo)(line)
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
        signal_tree(process.pid, signum)


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
    for process, _ in processes:  # the toolkit may exit before its script: wait for each host's tree
        wait_tree(process.pid)
    return codes[0] or next((code for code in codes if code), 0)
