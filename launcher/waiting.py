"""Waiting for what SageMaker runs: a training job (its logs streamed), a tuning job, an endpoint.

Ctrl-C while waiting stops the waiting, not the job, and says how to follow or stop it.
"""
import contextlib
import os
import time

from . import LauncherError

POLL_SECONDS = 20.0  # between status checks while waiting ($LAUNCHER_POLL_SECONDS overrides)


def training_job_commands(name, region):
    return (f"aws logs tail /aws/sagemaker/TrainingJobs --region {region} --log-stream-name-prefix {name} --follow",
            f"aws sagemaker stop-training-job --region {region} --training-job-name {name}")


@contextlib.contextmanager
def interrupted_while_waiting(kind, name, commands):
    """Ctrl-C stops our waiting, not the job: say so, and how to follow or stop it."""
    follow, stop = commands
    try:
        yield
    except KeyboardInterrupt:
        raise LauncherError(f"stopped waiting; {kind} {name} keeps running. Follow it: {follow}  Stop it: {stop}") from None


def poll_seconds():
    return float(os.environ.get("LAUNCHER_POLL_SECONDS") or POLL_SECONDS)


def follow_training_job(connection, name):
    """Stream the job's CloudWatch logs until it ends; a failure raises with its FailureReason."""
    from .sdk import UnexpectedStatusException, follow_logs

    with interrupted_while_waiting("training job", name, training_job_commands(name, connection.region)):
        try:
            follow_logs(connection.sagemaker, name, poll=poll_seconds())
        except UnexpectedStatusException:
            pass  # described below, in one line
    description = connection.client("sagemaker").describe_training_job(TrainingJobName=name)
    if description["TrainingJobStatus"] != "Completed":
        raise LauncherError(f"training job {name} {description['TrainingJobStatus'].lower()}: "
                            f"{description.get('FailureReason', 'no reason given')}")
    return description


def wait_for_tuning_job(connection, name):
    client = connection.client("sagemaker")
    commands = (f"aws sagemaker describe-hyper-parameter-tuning-job --region {connection.region} "
                f"--hyper-parameter-tuning-job-name {name}",
                f"aws sagemaker stop-hyper-parameter-tuning-job --region {connection.region} "
                f"--hyper-parameter-tuning-job-name {name}")
    last = None
    with interrupted_while_waiting("tuning job", name, commands):
        while True:
            description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
            status = description["HyperParameterTuningJobStatus"]
            counters = description.get("TrainingJobStatusCounters", {})
            line = f"{status}: " + ", ".join(f"{k} {v}" for k, v in counters.items() if v)
            if line != last:
                print(f"  {name}: {line}", flush=True)
                last = line
            if status in ("Completed", "Failed", "Stopped"):
                break
            time.sleep(poll_seconds())
    if status != "Completed":
        raise LauncherError(f"tuning job {name} {status.lower()}: {description.get('FailureReason') or 'no reason given'}")
    return description


def wait_for_endpoint(connection, name):
    client = connection.client("sagemaker")
    commands = (f"aws sagemaker describe-endpoint --region {connection.region} --endpoint-name {name}",
                f"python launch.py delete --endpoint {name}")
    with interrupted_while_waiting("endpoint", name, commands):
        while True:
            description = client.describe_endpoint(EndpointName=name)
            status = description["EndpointStatus"]
            if status not in ("Creating", "Updating", "SystemUpdating"):
                break
            time.sleep(poll_seconds())
    if status != "InService":
        raise LauncherError(f"endpoint {name} is {status}: {description.get('FailureReason') or 'no reason given'}"
                            f" (remove it with: python launch.py delete --endpoint {name})")
    return description

