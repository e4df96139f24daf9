"""Training and tuning jobs on SageMaker: what goes into them and what comes out.

The hyperparameters as sent (defaults overlaid, checked before any AWS call), the channels of an uploaded
dataset, the `pretrained` channel, the winning trial of a tuning job (and the parents a warm start may use),
and following a job to its end. launch.py's `tune` and `train` configure the Estimator and the tuner with
these.
"""
import sys

from image_classifier.training.hyperparameters import HyperparameterError, Hyperparameters

from . import LauncherError, api_rules, job_checks, s3_upload, waiting
from .cli import parse_hp

# Hyperparameters a tuning job adds to its trials, and those the launcher sets for trials only (`tune`
# turns Debugger tensors and rules off in trials): `train --from-tuning` takes neither.
PLATFORM_HYPERPARAMETER_PREFIXES = ("_tuning_objective_metric", "sagemaker_")
TRIAL_ONLY_HYPERPARAMETERS = {"debug-hook": "false", "rules": "false"}


def sagemaker_hyperparameters(overrides, network_isolation=False):
    """All hyperparameters as SageMaker passes them: the defaults, overlaid by `overrides` (the best tuning
    job's values, then --hp). Checked here, so a bad key or value fails before any AWS call."""
    # SageMaker jobs reach the internet, unless network isolation cuts them off.
    given = {"weights-download": "false" if network_isolation else "true", **overrides}
    try:  # parsed from what was given, so defaults that follow other values (trainable-layers) follow them
        resolved = Hyperparameters.from_strings(given).to_strings()
    except HyperparameterError as error:
        raise LauncherError(str(error)) from None
    return {**resolved, **given}


def training_channels(data_uri, splits, pretrained=None):
    """One channel per split of the uploaded dataset (an S3 prefix each, ending in `/` so that `train` does
    not also match `train_old`), and the `pretrained` channel when weights are given."""
    from .sdk import TrainingInput

    channels = {split: TrainingInput(s3_upload.folder_uri(f"{data_uri.rstrip('/')}/{split}")) for split in splits}
    if pretrained:
        channels["pretrained"] = TrainingInput(pretrained)
    return channels


def job_inputs(connection, args, job):
    """(dataset URI, its splits, the `pretrained` channel's URI or None) for a training or tuning job `job`."""
    if args.data and not args.data.startswith("s3://"):
        raise LauncherError(f"a SageMaker job reads its data from S3: run `python launch.py upload --data {args.data}`"
                            " first (or add --local to train on this machine)")
    data = connection.recall("data_s3_uri", args.data, "run `python launch.py upload --data DIR` or pass --data s3://...")
    connection.require("role", "bucket")
    connection.check_bucket_region()
    # The layout rules on the data as it is in S3 now (stale objects included), before the job exists.
    splits = job_checks.check_s3_data(connection.client("s3"), data, connection.dry_run)
    if connection.dry_run and data == connection.state.get("data_s3_uri"):
        splits = connection.state.get("data_splits") or splits  # what `upload` recorded for it
    pretrained = None
    if args.pretrained_weights:
        pretrained = str(args.pretrained_weights)
        if not pretrained.startswith("s3://"):
            uri = connection.s3_uri("pretrained", job)
            s3_upload.sync(connection.client("s3"), s3_upload.weights_files(pretrained), uri, parallel=1,
                           progress=not connection.dry_run)
            pretrained = uri + "/"
    elif args.network_isolation and parse_hp(args.hp).get("pretrained", "true").lower() in ("true", "1"):
        print("note: with --network-isolation the job cannot download the ImageNet weights: it needs "
              "--pretrained-weights, or an image built with --build-arg BAKE_WEIGHTS=true, or --hp pretrained=false",
              file=sys.stderr)
    return data, splits, pretrained


def format_hp(values):
    return " ".join(f"{k}={v}" for k, v in sorted(values.items()))


def attach_tuning_job(connection, name, on_error):
    """Wait for a tuning job (started now or earlier), then print its best training job."""
    on_error.attach = f"python launch.py tune --attach {name}"
    waiting.wait_for_tuning_job(connection, name)
    best, _ = winning_hyperparameters(connection, name)
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
    print(f"Best training job: {best['TrainingJobName']} {objective.get('MetricName', '?')}="
          f"{objective.get('Value', float('nan')):g}\nBest hyperparameters: "
          f"{format_hp(best.get('TunedHyperParameters', {}))}\n"
          f"Train with them: python launch.py train --from-tuning {name}")


def attach_training_job(connection, name, on_error):
    """Follow a training job (started now or earlier) to its end; record its model for deploy."""
    on_error.attach = f"python launch.py train --attach {name}"
    description = waiting.follow_training_job(connection, name)
    model_data = description["ModelArtifacts"]["S3ModelArtifacts"]
    connection.remember(training_job=name, model_data=model_data)
    metrics = {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}
    print(f"\nTraining job {name} completed. " + " ".join(f"{k}={v:g}" for k, v in sorted(metrics.items())))
    print(f"Model data: {model_data}")



def winning_hyperparameters(connection, tuning_job, allow_interim=False):
    """(best training job's name, its hyperparameters): the tuning job's static values and the best job's
    tuned ones, without the platform's own keys. A running tuning job's best is only the best so far."""
    description = connection.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=tuning_job)
    status = description.get("HyperParameterTuningJobStatus")
    best = description.get("BestTrainingJob")
    if not best:
        raise LauncherError(f"tuning job {tuning_job} has no best training job yet (status {status})")
    if status in ("InProgress", "Stopping") and not allow_interim:
        raise LauncherError(f"tuning job {tuning_job} is {status}: its best training job so far is an interim "
                            f"best; wait for it (python launch.py tune --attach {tuning_job}) or pass "
                            "--allow-interim")
    static = description.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {})
    values = {k: v for k, v in static.items() if k not in TRIAL_ONLY_HYPERPARAMETERS}
    best["TunedHyperParameters"] = {k: v.strip('"') for k, v in best.get("TunedHyperParameters", {}).items()
                                    if not k.startswith(PLATFORM_HYPERPARAMETER_PREFIXES)}
    values.update(best["TunedHyperParameters"])
    values = {k: v for k, v in values.items() if not k.startswith(PLATFORM_HYPERPARAMETER_PREFIXES)}
    return best, values


def check_warm_start_parents(connection, parents, image_uri, data_uri, objective, hyperparameter_names):
    """Refuses parents SageMaker would refuse (another objective, another number of hyperparameters); returns
    whether any ran another image or other data (then only TransferLearning applies)."""
    client = connection.client("sagemaker")
    differs = False
    for parent in parents:
        description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=parent)
        if not connection.dry_run:  # a dry run's answer is a placeholder
            api_rules.check_warm_start_parent(parent, description, objective, hyperparameter_names)
        definition = description.get("TrainingJobDefinition", {})
        image = definition.get("AlgorithmSpecification", {}).get("TrainingImage")
        data = {c.get("DataSource", {}).get("S3DataSource", {}).get("S3Uri", "").rstrip("/").rsplit("/", 1)[0]
                for c in definition.get("InputDataConfig", [])}
        differs = differs or image != image_uri or bool(data - {data_uri.rstrip("/")})
    return differs

