"""The sagemaker-training toolkit's framework module (`SAGEMAKER_TRAINING_MODULE=image_classifier.training.toolkit_entry:main`).

The toolkit's `train` calls `main()` in place of its own generic runner. A job of one process (one host,
at most one GPU) runs the training script as a plain process, exactly as the generic runner would. A
data-parallel job (several hosts, or several GPUs) runs it under the toolkit's own torchrun runner: one
process per GPU (one per host on the CPU), static rendezvous, master `hosts[0]`, port 7777. The
hyperparameter `sagemaker_torch_distributed_enabled` ("true", "false", or "auto": hosts x processes > 1)
forces the choice or leaves it to this module.

Two traps of toolkit 4.9 are avoided by building the runner here rather than letting the toolkit do it:
- its torchrun runner runs `" ".join(cmd)` through a shell, unquoted, and its default arguments are the
  hyperparameters: the script gets NO arguments (it reads hyperparameters.json itself) and every part of
  the command is shell-quoted, so nothing a user sends can become shell syntax;
- with `instance_groups` in resourceconfig.json (every real job) and the distribution flag off, its
  `distribution_hosts` is empty and the runner fails on `hosts.index(current_host)`: the hosts here are
  the resource config's own, whatever the flag says.

Torch-free: it runs in the toolkit's process, which only starts the script.
"""
import json
import shlex
import signal

from sagemaker_training import entry_point, environment, errors, params, process, runner, torch_distributed

from ..constants import TORCH_DISTRIBUTED_AUTO, TORCH_DISTRIBUTED_HYPERPARAMETER

# The training script takes no command-line arguments: what reaches them reaches the toolkit's shell.
NO_ARGUMENTS = ()
_SETTINGS = {"true": True, "false": False, TORCH_DISTRIBUTED_AUTO: None}


class DistributionSettingError(errors.ClientError):
    """A distribution hyperparameter this module cannot use; the message names it (the toolkit writes it to
    the failure file)."""


def _shown(value):
    return json.dumps(str(value))[:100]


def distribution_setting(env):
    """True (torchrun), False (a plain process) or None (auto: decided from hosts x processes)."""
    raw = env.additional_framework_parameters.get(TORCH_DISTRIBUTED_HYPERPARAMETER, TORCH_DISTRIBUTED_AUTO)
    text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw).strip().lower()
    if text not in _SETTINGS:
        raise DistributionSettingError(f"Hyperparameter '{TORCH_DISTRIBUTED_HYPERPARAMETER}' = {_shown(raw)} is not "
                                       f"valid: expected one of {', '.join(_SETTINGS)}.")
    return _SETTINGS[text]


def processes_per_host(env):
    """One per GPU, one on a CPU-only host, unless the hyperparameter `sagemaker_mpi_num_of_processes_per_host`
    says otherwise (the toolkit's own rule, also for its torchrun runner)."""
    raw = env.additional_framework_parameters.get(params.MPI_PROCESSES_PER_HOST)
    if raw is None:
        return max(int(env.num_gpus), 1)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return raw
    raise DistributionSettingError(f"Hyperparameter '{params.MPI_PROCESSES_PER_HOST}' = {_shown(raw)} is not valid: "
                                   "expected an integer from 1.")


def torchrun_wanted(env):
    forced = distribution_setting(env)
    if forced is not None:
        return forced
    return len(env.hosts) * processes_per_host(env) > 1


class QuotedTorchrunRunner(torch_distributed.TorchDistributedRunner):
    """The toolkit's torchrun runner with every part of its command shell-quoted (it runs through a shell)."""

    def _create_command(self):
        return [shlex.quote(str(part)) for part in super()._create_command()]


def torchrun_runner(env):
    """torchrun over every host of the resource config (`hosts`, sorted as SageMaker writes it; master the
    first), the script with no arguments."""
    hosts = list(env.hosts)
    return QuotedTorchrunRunner(env.user_entry_point, list(NO_ARGUMENTS), env.to_env_vars(), processes_per_host(env),
                                hosts[0], hosts, env.current_host, env.network_interface_name,
                                instance_type=env.current_instance_type)


def process_runner(env):
    """The script as one plain process (the toolkit starts it without a shell), with no arguments."""
    return process.ProcessRunner(env.user_entry_point, list(NO_ARGUMENTS), env.to_env_vars(), 1)


def _keep_relaying(signum, frame):
    print("SIGTERM: waiting for the training processes to save and exit", flush=True)


def main():
    env = environment.Environment()
    if not torchrun_wanted(env):
        job_runner, capture_error = process_runner(env), False
    else:
        job_runner = torchrun_runner(env)
        # The toolkit passes (wait, capture_error) positionally to a runner whose run() takes
        # (capture_error, wait): True here means "wait for torchrun", so a failed rank fails the job.
        capture_error = True
        # The training processes' output reaches the log through this process (torchrun's pipe): it must
        # outlive a SIGTERM, which torchrun passes on to them, until they have saved and exited.
        signal.signal(signal.SIGTERM, _keep_relaying)
        print(f"Data-parallel training: {len(env.hosts)} host(s) x {processes_per_host(env)} process(es) "
              f"under torchrun, master {json.dumps(env.hosts[0])}", flush=True)
    # A runner object is used as given (runner.get); the toolkit would otherwise fill in empty arguments
    # with the hyperparameters.
    entry_point.run(env.module_dir, env.user_entry_point, list(NO_ARGUMENTS), env.to_env_vars(),
                    capture_error=capture_error, runner_type=job_runner)
