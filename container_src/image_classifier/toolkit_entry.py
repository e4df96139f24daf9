"""The sagemaker-training toolkit's framework module (`SAGEMAKER_TRAINING_MODULE=image_classifier.toolkit_entry:main`).

The toolkit's `train` calls `main()` in place of its own generic runner. A job of one process (one host,
at most one GPU) runs the training script as a plain process, exactly as the generic runner would. A
data-parallel job (several hosts, or several GPUs) runs it under the toolkit's own torchrun runner: one
process per GPU (one per host on the CPU), static rendezvous, master `hosts[0]`, port 7777. The
hyperparameter `sagemaker_torch_distributed_enabled` ("true"/"false") forces the choice.

Torch-free: it runs in the toolkit's process, which only starts the script.
"""
import json
import signal

from sagemaker_training import entry_point, environment, params, runner

from .constants import TORCH_DISTRIBUTED_HYPERPARAMETER


def processes_per_host(env):
    """One per GPU, one on a CPU-only host, unless the hyperparameter `sagemaker_mpi_num_of_processes_per_host`
    says otherwise (the toolkit's own rule, also for its torchrun runner)."""
    default = max(int(env.num_gpus), 1)
    return int(env.additional_framework_parameters.get(params.MPI_PROCESSES_PER_HOST) or default)


def torchrun_wanted(env):
    forced = env.additional_framework_parameters.get(TORCH_DISTRIBUTED_HYPERPARAMETER)
    if forced is not None:
        return forced if isinstance(forced, bool) else str(forced).lower() == "true"
    return len(env.hosts) * processes_per_host(env) > 1


def _keep_relaying(signum, frame):
    print("SIGTERM: waiting for the training processes to save and exit", flush=True)


def main():
    env = environment.Environment()
    if not torchrun_wanted(env):
        runner_type, capture_error = runner.ProcessRunnerType, False
    else:
        runner_type = runner.TorchDistributedRunnerType
        # The toolkit passes (wait, capture_error) positionally to a runner whose run() takes
        # (capture_error, wait): True here means "wait for torchrun", so a failed rank fails the job.
        capture_error = True
        # The training processes' output reaches the log through this process (torchrun's pipe): it must
        # outlive a SIGTERM, which torchrun passes on to them, until they have saved and exited.
        signal.signal(signal.SIGTERM, _keep_relaying)
        print(f"Data-parallel training: {len(env.hosts)} host(s) x {processes_per_host(env)} process(es) "
              f"under torchrun, master {json.dumps(env.master_hostname)}", flush=True)
    entry_point.run(env.module_dir, env.user_entry_point, env.to_cmd_args(), env.to_env_vars(),
                    capture_error=capture_error, runner_type=runner_type)
