#!/usr/bin/env python3
"""Train, tune, deploy and query the image classifier on SageMaker, or run the same jobs locally.

    python launch.py data --sample digits            # write the embedded sample dataset
    python launch.py train --local                   # train on this machine, in the image or as a process

On SageMaker (after ./build_and_push.sh; each step records what it made for the next, see README.md):

    python launch.py upload --data dogImages         # the dataset to S3
    python launch.py tune                            # tuning job over lr and batch-size
    python launch.py train --from-tuning             # training job with the best values, Debugger, profiler
    python launch.py deploy                          # endpoint, and one sample prediction
    python launch.py predict dog.jpg                 # top-k breeds
    python launch.py delete                          # endpoint, endpoint config and model

    python launch.py train --attach JOB              # follow a job started earlier (e.g. after credentials expired)
    python launch.py delete --all                    # everything tagged project=image-classifier, after one question

Run `python launch.py COMMAND --help` for each command's options.
"""
import json
import shutil
import sys
from pathlib import Path

from image_classifier import constants
from image_classifier.config import HyperparameterError, Hyperparameters
from image_classifier.contract import CONTAINER_PATHS, TENSORS_FOLDER
from image_classifier.metrics import METRIC_DEFINITIONS
from launcher import (SAMPLE_DIR, LauncherError, api_rules, aws, local, report, s3_upload, scaling, terminal, transform,
                      unique_name)
from launcher.cli import ENDPOINT_INSTANCE, LAST, TRAINING_INSTANCE, TUNING_JOB_PREFIX, build_parser
from launcher.local import client, hosts, serving, trees
from launcher.sample_data import write_digits

# The SageMaker SDK (sagemaker.*, launcher.sdk) is imported inside the recipes that use it: it takes over a
# second to import, which every local command and --help would otherwise pay.

# The demo's training run: digits are tiny, so a small ResNet from scratch at 32 px learns them in a minute.
DIGITS_HYPERPARAMETERS = {
    "arch": "resnet18", "pretrained": "false", "trainable-layers": "4", "image-size": "32",
    "epochs": "8", "batch-size": "32", "lr": "0.002", "augment": "none", "workers": "2",
}


def parse_hp(pairs):
    """`--hp KEY=VALUE` pairs into a dict (values stay strings, as SageMaker passes them)."""
    hps = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LauncherError(f"--hp expects KEY=VALUE, got {pair!r}")
        hps[key.strip()] = value.strip()
    return hps


# ---------------------------------------------------------------------------------------------- data
def cmd_data(args):
    counts = write_digits(args.dest)
    print(f"Digits sample in {args.dest}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# ------------------------------------------------------------------------------------ SageMaker recipes
# Without SageMaker's Debugger hook configuration the job writes its tensors into its output data, which
# SageMaker uploads as output.tar.gz (`report --job` reads them there).
TENSORS_IN_OUTPUT_DATA = {constants.TENSORS_DIR_ENV: str(CONTAINER_PATHS.output_data / TENSORS_FOLDER)}


def sagemaker_hyperparameters(overrides, network_isolation=False):
    """All hyperparameters as SageMaker passes them: the defaults, overlaid by `overrides` (the best tuning
    job's values, then --hp). Checked here, so a bad key or value fails before any AWS call."""
    values = Hyperparameters().to_strings()
    # SageMaker jobs reach the internet, unless network isolation cuts them off.
    values["weights-download"] = "false" if network_isolation else "true"
    values.update(overrides)
    try:
        Hyperparameters.from_strings(values)
    except HyperparameterError as error:
        raise LauncherError(str(error)) from None
    return values


def training_channels(data_uri, splits, pretrained=None):
    """One channel per split of the uploaded dataset (an S3 prefix each, ending in `/` so that `train` does
    not also match `train_old`), and the `pretrained` channel when weights are given."""
    from sagemaker.inputs import TrainingInput

    channels = {split: TrainingInput(f"{data_uri.rstrip('/')}/{split}/") for split in splits}
    if pretrained:
        channels["pretrained"] = TrainingInput(pretrained)
    return channels


def estimator(connection, hyperparameters, args, tags, checkpoints=None, debugger=False):
    """Our image as a generic SDK Estimator. `checkpoints`: where a spot job's checkpoints go in S3 (ending in `/`:
    SageMaker syncs back every object under the prefix, and `run1` would also match `run10`).
    `debugger` (training jobs only; tuning jobs have no field for it): SageMaker's Debugger hook, profiler and
    built-in rules. Without it the job's own tensors travel in its output data (output.tar.gz)."""
    from sagemaker.debugger import CollectionConfig, DebuggerHookConfig, ProfilerConfig

    from launcher.sdk import Estimator

    spot = not args.no_spot
    instance_type = args.instance_type or TRAINING_INSTANCE
    api_rules.check_runs_the_image(instance_type)
    # The tensors' save intervals are the job's own hyperparameters (one definition, also used off SageMaker).
    job = Hyperparameters.from_strings(hyperparameters)
    losses_every, tensors_every = str(job.debug_loss_interval), str(job.debug_tensor_interval)
    vpc = vpc_config(args) or {}
    return Estimator(
        image_uri=connection.image_uri(),
        role=connection.role,
        instance_count=args.instance_count,
        instance_type=instance_type,
        volume_size=50,  # GB: dogImages (1.1 GB), the pretrained weights, checkpoints, tensors
        hyperparameters={**hyperparameters, **distribution(args.instance_count)},
        metric_definitions=METRIC_DEFINITIONS,  # the same regexes the job's metric lines are written for
        output_path=connection.s3_uri("jobs"),
        max_run=args.max_run,
        use_spot_instances=spot,
        max_wait=2 * args.max_run if spot else None,
        checkpoint_s3_uri=checkpoints if spot else None,
        subnets=vpc.get("Subnets"),
        security_group_ids=vpc.get("SecurityGroupIds"),
        volume_kms_key=api_rules.volume_kms_key(instance_type, args.kms_key),  # none on local NVMe storage
        output_kms_key=args.kms_key,
        enable_network_isolation=args.network_isolation,
        environment=None if debugger else TENSORS_IN_OUTPUT_DATA,
        debugger_hook_config=DebuggerHookConfig(
            s3_output_path=connection.s3_uri("tensors"),
            collection_configs=[
                CollectionConfig("losses", parameters={"save_interval": losses_every}),
                CollectionConfig("weights", parameters={"save_interval": tensors_every}),
                CollectionConfig("gradients", parameters={"save_interval": tensors_every}),
                CollectionConfig("biases", parameters={"save_interval": tensors_every}),
            ],
        ) if debugger and job.debug_hook else False,
        profiler_config=ProfilerConfig(
            s3_output_path=connection.s3_uri("profiler"),
            system_monitor_interval_millis=500,  # CPU, GPU, memory, I/O; torch.profiler runs in the job
        ) if debugger else None,
        disable_profiler=not debugger,
        rules=builtin_debugger_rules() if debugger and args.builtin_rules else None,
        tags=tags,
        sagemaker_session=connection.sagemaker,
    )


def distribution(instance_count):
    """The toolkit's torchrun runner, one process per GPU on each host: "true" on several instances, "auto" on
    one (the job decides from its GPUs). Always sent, so every job (and every warm start's parent) has the same
    static hyperparameters. `batch-size` stays per GPU."""
    return {constants.TORCH_DISTRIBUTED_HYPERPARAMETER: constants.distribution_hyperparameter(instance_count)}


def vpc_config(args):
    """--subnets and --security-groups (SageMaker needs both, or neither)."""
    if bool(args.subnets) != bool(args.security_groups):
        raise LauncherError("a VPC needs both --subnets and --security-groups")
    return {"Subnets": args.subnets, "SecurityGroupIds": args.security_groups} if args.subnets else None


def builtin_debugger_rules():
    """SageMaker's own rule containers: only for accounts that still have Debugger (closed to new customers
    on 2026-07-30). By default the job runs our rules itself (hyperparameter `rules`)."""
    from sagemaker.debugger import ProfilerRule, Rule, rule_configs

    return [Rule.sagemaker(rule_configs.loss_not_decreasing()), Rule.sagemaker(rule_configs.overfit()),
            Rule.sagemaker(rule_configs.vanishing_gradient()), Rule.sagemaker(rule_configs.poor_weight_initialization()),
            ProfilerRule.sagemaker(rule_configs.ProfilerReport())]


def job_inputs(connection, args, job):
    """(dataset URI, its splits, the `pretrained` channel's URI or None) for a training or tuning job `job`."""
    if args.data and not args.data.startswith("s3://"):
        raise LauncherError(f"a SageMaker job reads its data from S3: run `python launch.py upload --data {args.data}`"
                            " first (or add --local to train on this machine)")
    data = connection.recall("data_s3_uri", args.data, "run `python launch.py upload --data DIR` or pass --data s3://...")
    connection.require("role", "bucket")
    connection.check_bucket_region()
    if data == connection.state.get("data_s3_uri") and connection.state.get("data_splits"):
        splits = connection.state["data_splits"]  # recorded by `upload` for this very dataset
    else:
        splits = s3_upload.splits_in_s3(connection.client("s3"), data) or (
            list(s3_upload.SPLITS) if connection.dry_run else [])
        if "train" not in splits:
            raise LauncherError(f"no train/ folder under {data}: expected the dogImages layout (train/ valid/ test/)")
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


def sample_picture(local_data):
    """A picture of the uploaded dataset's test (or valid) split, for deploy's first prediction."""
    for split in ("test", "valid"):
        folder = Path(local_data or "/nonexistent") / split
        if folder.is_dir():
            return next((p for p in sorted(folder.rglob("*")) if p.suffix.lower() in constants.IMAGE_EXTENSIONS), None)
    return None


# -------------------------------------------------------------------------------------------- upload
def cmd_upload(args):
    """Copy the dataset folder to S3 (only what is new or changed; --delete removes what is gone locally)."""
    connection = aws.Aws(args)
    with aws.errors():
        connection.check_bucket_region()
        uri = args.s3 or connection.s3_uri("data", Path(args.data).resolve().name)
        splits, uploaded, skipped, deleted = s3_upload.upload(
            connection.client("s3"), args.data, uri, parallel=1 if connection.dry_run else s3_upload.PARALLEL_UPLOADS,
            progress=not connection.dry_run, delete=args.delete)
        if connection.dry_run:
            return connection.finish_dry_run()
        connection.remember(data_s3_uri=uri, data_splits=splits, local_data=str(Path(args.data).resolve()))
        print(f"Dataset in {uri} ({', '.join(splits)}): {uploaded} file(s) uploaded, {skipped} already there"
              + (f", {deleted} deleted (no longer in {args.data})." if args.delete else "."))


# ---------------------------------------------------------------------------------------------- tune
def cmd_tune(args):
    """A hyperparameter tuning job over the learning rate and the batch size (the original project's ranges)."""
    from sagemaker.tuner import (CategoricalParameter, ContinuousParameter, HyperparameterTuner, WarmStartConfig,
                                 WarmStartTypes)

    connection = aws.Aws(args)
    with aws.errors() as on_error:
        if args.attach:
            return attach_tuning_job(connection, args.attach, on_error)
        name = args.job_name or unique_name(TUNING_JOB_PREFIX)
        # Trials save no tensors and run no rules unless asked: nobody reads them.
        trial_values = {} if args.trial_debugging else dict(aws.TRIAL_ONLY_HYPERPARAMETERS)
        hyperparameters = sagemaker_hyperparameters({**trial_values, **parse_hp(args.hp)}, args.network_isolation)
        data, splits, pretrained = job_inputs(connection, args, name)
        training = estimator(connection, hyperparameters, args, tags=aws.tags(data=data),
                             checkpoints=connection.s3_uri("checkpoints", name) + "/")  # a trial resumes after spot
        # The saved model's own value (the job's last line for it), maximised, or minimised for a loss.
        objective = {"MetricName": args.objective, "Type": "Minimize" if args.objective.endswith("loss") else "Maximize"}
        ranges = {
            "lr": ContinuousParameter(0.001, 0.1, scaling_type="Logarithmic"),
            "batch-size": CategoricalParameter([32, 64, 128, 256, 512]),
        }
        warm_start = None
        if args.warm_start:  # parents with the same objective and hyperparameters; a rebuilt image (or other
            # data) rules out IdenticalDataAndAlgorithm
            changed = connection.check_warm_start_parents(args.warm_start, training.image_uri, data, objective,
                                                          {*training.hyperparameters(), *ranges})
            warm_start = WarmStartConfig(WarmStartTypes.TRANSFER_LEARNING if changed else
                                         WarmStartTypes.IDENTICAL_DATA_AND_ALGORITHM, parents=set(args.warm_start))
        tuner = HyperparameterTuner(
            training,
            objective_metric_name=objective["MetricName"],
            objective_type=objective["Type"],
            hyperparameter_ranges=ranges,
            metric_definitions=METRIC_DEFINITIONS,
            strategy=args.strategy,
            max_jobs=args.max_jobs,
            max_parallel_jobs=args.max_parallel_jobs,
            early_stopping_type="Auto",
            warm_start_config=warm_start,
            tags=aws.tags(data=data),
        )
        tuner.fit(training_channels(data, splits, pretrained), job_name=name, wait=False)
        if connection.dry_run:
            return connection.finish_dry_run()
        connection.remember(tuning_job=name)
        print(f"Tuning job {name} started: {args.max_jobs} training jobs, {args.max_parallel_jobs} at a time, "
              f"{'maximising' if not args.objective.endswith('loss') else 'minimising'} {args.objective}.", flush=True)
        if args.no_wait:
            return print(f"Not waiting. Then: python launch.py train --from-tuning {name}")
        attach_tuning_job(connection, name, on_error)


def attach_tuning_job(connection, name, on_error):
    """Wait for a tuning job (started now or earlier), then print its best training job."""
    on_error.attach = f"python launch.py tune --attach {name}"
    connection.wait_for_tuning_job(name)
    best, _ = connection.winning_hyperparameters(name)
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
    print(f"Best training job: {best['TrainingJobName']} {objective.get('MetricName', '?')}="
          f"{objective.get('Value', float('nan')):g}\nBest hyperparameters: "
          f"{format_hp(best.get('TunedHyperParameters', {}))}\n"
          f"Train with them: python launch.py train --from-tuning {name}")


# --------------------------------------------------------------------------------------------- train
def cmd_train(args):
    if args.local:
        return train_local(args)
    return train_sagemaker(args)


def train_sagemaker(args):
    """A training job with the best tuning values, Debugger hook and profiler, on a spot instance."""
    connection = aws.Aws(args)
    with aws.errors() as on_error:
        if args.attach:
            return attach_training_job(connection, args.attach, on_error)
        if args.builtin_rules and args.no_debugger:
            raise LauncherError("--builtin-rules needs SageMaker Debugger: drop --no-debugger (or --builtin-rules)")
        overrides = {}
        tuning_job = None
        if args.from_tuning:
            tuning_job = connection.recall("tuning_job", None if args.from_tuning == LAST else args.from_tuning,
                                           "run `python launch.py tune` or pass --from-tuning JOB")
            best, winning = connection.winning_hyperparameters(tuning_job, args.allow_interim)
            overrides.update(winning)  # the tuning job's static values and the best trial's tuned ones
            print(f"From tuning job {tuning_job}: best training job {best['TrainingJobName']} "
                  f"{format_hp(winning)}", file=sys.stderr)
        overrides.update(parse_hp(args.hp))
        hyperparameters = sagemaker_hyperparameters(overrides, args.network_isolation)
        name = args.job_name or unique_name()
        data, splits, pretrained = job_inputs(connection, args, name)
        training = estimator(connection, hyperparameters, args, tags=aws.tags(data=data, tuning_job=tuning_job),
                             checkpoints=connection.s3_uri("checkpoints", name) + "/", debugger=not args.no_debugger)
        training.fit(training_channels(data, splits, pretrained), job_name=name, wait=False)
        if connection.dry_run:
            return connection.finish_dry_run()
        connection.remember(training_job=name, tuning_job=tuning_job)
        print(f"Training job {name} started ({args.instance_type or TRAINING_INSTANCE}).", flush=True)
        if args.no_wait:
            return print(f"Not waiting. Follow it: python launch.py train --attach {name}")
        attach_training_job(connection, name, on_error)


def attach_training_job(connection, name, on_error):
    """Follow a training job (started now or earlier) to its end; record its model for deploy."""
    on_error.attach = f"python launch.py train --attach {name}"
    description = connection.follow_training_job(name)
    model_data = description["ModelArtifacts"]["S3ModelArtifacts"]
    connection.remember(training_job=name, model_data=model_data)
    metrics = {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}
    print(f"\nTraining job {name} completed. " + " ".join(f"{k}={v:g}" for k, v in sorted(metrics.items())))
    print(f"Model data: {model_data}")


def train_local(args):
    data = Path(args.data) if args.data else SAMPLE_DIR
    hyperparameters = dict(DIGITS_HYPERPARAMETERS) if not args.data else {}
    hyperparameters.update(parse_hp(args.hp))
    if not args.data:
        write_digits(SAMPLE_DIR)
    runner = local.backend(args.local)
    name = args.job_name or unique_name()
    channels = {"train": data}
    if args.pretrained_weights:
        channels["pretrained"] = local_pretrained_channel(args.pretrained_weights, Path(args.jobs_dir) / name)
        hyperparameters["pretrained"] = parse_hp(args.hp).get("pretrained", "true")
    if args.instance_count > 1:
        jobs = hosts.prepare_hosts(args.jobs_dir, name, channels, hyperparameters, args.instance_count,
                                   runner.HOST_INTERFACE)
        job = jobs[0]
        print(f"Training job {name} ({runner.MODE}, {args.instance_count} emulated hosts) in {job.dir}")
        exit_code = runner.train_hosts(jobs)  # every host's `train` at once: containers on a network, or processes
    else:
        job = trees.prepare_job(args.jobs_dir, name, channels, hyperparameters)
        print(f"Training job {name} ({runner.MODE}) in {job.dir}")
        exit_code = runner.train(job)  # `docker run IMAGE train` over the tree, or the toolkit's `train` process
    metrics = trees.finish(job)
    summary = " ".join(f"{k}={v:g}" for k, v in metrics.items())
    if not job.succeeded:
        raise LauncherError(f"Training job {name} failed (exit {exit_code}): {job.failure_reason or 'see ' + str(job.log_file)}")
    print(f"\nTraining job {name} completed. {summary}\nModel artifact: {job.model_tar}\nLog: {job.log_file}")


def local_pretrained_channel(weights, job_dir):
    """The `pretrained` channel of a local job: a folder holding the .pth file(s), as SageMaker would give it.
    A single file is copied into the job's own folder (a docker job mounts only its channels)."""
    if str(weights).startswith("s3://"):
        raise LauncherError("a local job reads its --pretrained-weights from this machine: give a .pth file or folder")
    files = s3_upload.weights_files(weights)
    if Path(weights).is_dir():
        return Path(weights)
    folder = job_dir / "pretrained-weights"
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        shutil.copyfile(path, folder / name)
    return folder


# --------------------------------------------------------------------------------- deploy / predict
def cmd_deploy(args):
    if args.local:
        return serving.deploy(model=args.model, port=args.port, mode=args.local, detach=args.detach)
    return deploy_sagemaker(args)


def model_to_serve(connection, args):
    """(training job or None, model.tar.gz S3 URI): --model-data, else --job's (or the last `train`'s) model."""
    training_job = args.job or (None if args.model_data else connection.state.get("training_job"))
    if args.model_data:
        return None, args.model_data
    if training_job:
        description = connection.client("sagemaker").describe_training_job(TrainingJobName=training_job)
        if description["TrainingJobStatus"] != "Completed":
            raise LauncherError(f"training job {training_job} is {description['TrainingJobStatus']}: "
                                f"{args.command} needs a completed one")
        return training_job, description["ModelArtifacts"]["S3ModelArtifacts"]
    return None, connection.recall("model_data", None, "run `python launch.py train` or pass --job / --model-data")


def serving_model(connection, model_data, name, args):
    """Our image serving `model_data`: the one recipe behind endpoints and batch transform jobs."""
    from sagemaker.model import Model

    return Model(
        image_uri=connection.image_uri(),
        model_data=model_data,
        role=connection.role,
        name=name,
        vpc_config=vpc_config(args),
        enable_network_isolation=args.network_isolation,
        sagemaker_session=connection.sagemaker,
    )


def deploy_sagemaker(args):
    """A real-time endpoint serving the model our image, then one sample prediction."""
    connection = aws.Aws(args)
    with aws.errors():
        recorded = connection.state.get("endpoint")
        if recorded and args.endpoint in (None, recorded) and not connection.dry_run \
                and connection.endpoint_is_live(recorded):
            raise LauncherError(f"endpoint {recorded} (recorded by an earlier deploy) is still up and costs money: "
                                f"remove it first (python launch.py delete --endpoint {recorded}), or pass "
                                "--endpoint NAME for a second one")
        capacity = traffic_options(connection, args)  # checked before anything is made
        training_job, model_data = model_to_serve(connection, args)
        name = args.endpoint or unique_name()
        model = serving_model(connection, model_data, name, args)
        with connection.costs_until_deleted(name):  # says so on every way out, Ctrl-C included
            model.deploy(
                **capacity,
                endpoint_name=name,
                kms_key=endpoint_kms_key(args),  # none on local NVMe storage
                tags=aws.tags(training_job=training_job, model_data=model_data),
                wait=False,
            )
            if not connection.dry_run:
                connection.remember(endpoint=name, model=name)
                print(f"Endpoint {name} is being created ({describe_capacity(args)}); this takes a few minutes.",
                      flush=True)
                connection.wait_for_endpoint(name)
                print(f"Endpoint {name} is in service.")
            if args.autoscale:  # Application Auto Scaling takes only an endpoint in service
                scaling.enable(connection.client("application-autoscaling"), name, *scaling.parse_autoscale(args.autoscale),
                               args.target_invocations)
                if not connection.dry_run:
                    print(f"Autoscaling {args.autoscale} instances at {args.target_invocations:g} invocations per "
                          "instance per minute.")
            if connection.dry_run:
                return connection.finish_dry_run()
            sample = args.sample_image or sample_picture(connection.state.get("local_data"))
            if sample:
                print("Sample prediction:")
                invoke_endpoint(connection, name, [Path(sample)], top_k=3)
            print(f"Query it: python launch.py predict IMAGE --endpoint {name}")


def traffic_options(connection, args):
    """model.deploy's capacity arguments: instances (--instance-count, or --autoscale's minimum) or a
    serverless configuration, and data capture. Checked before any endpoint is made."""
    from sagemaker.model_monitor import DataCaptureConfig
    from sagemaker.serverless import ServerlessInferenceConfig

    options = {}
    if args.serverless:
        scaling.check_serverless(args.serverless, args.instance_type, args.instance_count, args.autoscale)
        if args.inference_ami:
            raise LauncherError("--inference-ami applies to GPU instances, and serverless endpoints run on CPU")
        api_rules.check_serverless(vpc_config(args), args.network_isolation, args.data_capture, connection.sagemaker)
        options["serverless_inference_config"] = ServerlessInferenceConfig(
            memory_size_in_mb=args.serverless, max_concurrency=args.max_concurrency)
    else:
        minimum = scaling.parse_autoscale(args.autoscale)[0] if args.autoscale else 1
        instance_type = args.instance_type or ENDPOINT_INSTANCE
        options.update(initial_instance_count=args.instance_count or minimum, instance_type=instance_type,
                       inference_ami_version=api_rules.inference_ami(instance_type, args.inference_ami))
    if args.data_capture is not None:
        if not 0 < args.data_capture <= 100:
            raise LauncherError(f"--data-capture {args.data_capture}: a percentage of requests, 1 to 100")
        connection.require("bucket")
        options["data_capture_config"] = DataCaptureConfig(
            enable_capture=True, sampling_percentage=args.data_capture,
            destination_s3_uri=connection.s3_uri(scaling.CAPTURE_PREFIX), kms_key_id=args.kms_key,
            sagemaker_session=connection.sagemaker)
    return options


def endpoint_kms_key(args):
    """The endpoint's storage key: CreateEndpointConfig fails with a KmsKeyId on instance types with local NVMe
    storage, as the training and transform volumes do (api_rules.volume_kms_key)."""
    if args.serverless:
        return args.kms_key
    return api_rules.volume_kms_key(args.instance_type or ENDPOINT_INSTANCE, args.kms_key)


def describe_capacity(args):
    if args.serverless:
        return f"serverless, {args.serverless} MB"
    return f"{args.instance_count or 1} x {args.instance_type or ENDPOINT_INSTANCE}"


def cmd_predict(args):
    if args.local:
        return client.predict(args.images, port=args.port, top_k=args.top_k, as_json=args.json)
    return predict_sagemaker(args)


def predict_sagemaker(args):
    connection = aws.Aws(args)
    with aws.errors():
        endpoint = connection.recall("endpoint", args.endpoint, "run `python launch.py deploy` or pass --endpoint NAME")
        invoke_endpoint(connection, endpoint, args.images, top_k=args.top_k, as_json=args.json)
        if connection.dry_run:
            connection.finish_dry_run()


def invoke_endpoint(connection, endpoint, images, top_k, as_json=False):
    """Each picture's raw bytes as image/jpeg (or its own type), the endpoint's JSON answer back."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    predictor = Predictor(endpoint, sagemaker_session=connection.sagemaker,
                          serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())
    for path in map(Path, images):
        if not path.is_file():
            raise LauncherError(f"{path}: no such file")
        answer = predictor.predict(path.read_bytes(), initial_args={"ContentType": client.content_type_of(path)},
                                   custom_attributes=f"top_k={top_k}")
        if connection.dry_run:
            continue
        print(json.dumps(answer) if as_json else client.format_table(path, answer["predictions"][0]))


def cmd_delete(args):
    if args.local:
        return serving.delete(port=args.port)
    return delete_sagemaker(args)


def delete_sagemaker(args):
    """The endpoint, its endpoint config and its model(s): everything deploy made (--all: everything tagged
    project=image-classifier)."""
    connection = aws.Aws(args)
    with aws.errors():
        if args.all:
            return delete_everything(connection, args.yes)
        endpoint = connection.recall("endpoint", args.endpoint, "pass --endpoint NAME (or --all)")
        client = connection.client("sagemaker")
        try:
            config_name = client.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        except client.exceptions.ClientError as error:
            if "Could not find" not in str(error):
                raise
            raise LauncherError(f"endpoint {endpoint} not found in {connection.region} (already deleted?)") from None
        models = [v["ModelName"] for v in
                  client.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]]
        policies = scaling.remove(connection.client("application-autoscaling"), endpoint)
        client.delete_endpoint(EndpointName=endpoint)
        client.delete_endpoint_config(EndpointConfigName=config_name)
        for model in models:
            client.delete_model(ModelName=model)
        if connection.dry_run:
            return connection.finish_dry_run()
        if connection.state.get("endpoint") == endpoint:
            connection.forget("endpoint", "model")
        print(f"Deleted endpoint {endpoint}, endpoint config {config_name}, model(s) {', '.join(models)}"
              + (f", scaling policy {', '.join(policies)} and its scalable target." if policies is not None else "."))


def delete_everything(connection, yes):
    """Every endpoint (with its scaling), endpoint config and model tagged project=image-classifier, after one
    confirmation."""
    client = connection.client("sagemaker")
    found = connection.project_resources()
    if connection.dry_run or not found:
        if not found and not connection.dry_run:
            print(f"Nothing tagged {aws.PROJECT_TAG['Key']}={aws.PROJECT_TAG['Value']} in {connection.region}.")
        return connection.finish_dry_run() if connection.dry_run else None
    print(f"Tagged {aws.PROJECT_TAG['Key']}={aws.PROJECT_TAG['Value']} in {connection.region}:")
    for kind, name in found:
        print(f"  {kind}: {name}")
    if not yes and input(f"Delete these {len(found)}? [y/N] ").strip().lower() not in ("y", "yes"):
        return print("Nothing deleted.")
    autoscaling = connection.client("application-autoscaling")

    def delete_endpoint(name):
        scaling.remove(autoscaling, name)  # its scaling policy and target first, if it has them
        client.delete_endpoint(EndpointName=name)

    delete = {"endpoint": delete_endpoint,
              "endpoint config": lambda n: client.delete_endpoint_config(EndpointConfigName=n),
              "model": lambda n: client.delete_model(ModelName=n)}
    for kind, name in found:  # endpoints first, then their configs, then the models
        delete[kind](name)
    connection.forget("endpoint", "model")
    print(f"Deleted {len(found)}: " + ", ".join(f"{kind} {name}" for kind, name in found))


# ----------------------------------------------------------------------------------------- transform
def cmd_transform(args):
    """Batch transform: one request per picture, one `<picture>.out` answer each (locally with --local)."""
    if args.summarize:  # with --data (a local folder): outputs with no input picture are left out
        inputs = (Path(args.data), transform.input_files(args.data)) if args.data else None
        summary = transform.summarize(args.summarize, args.csv, inputs)
        return 0 if transform.print_summary(summary, args.summarize) else 2
    if not args.data:
        raise LauncherError("transform needs --data (a folder with --local, else an s3:// prefix), or --summarize OUT")
    if not args.local:
        return transform_sagemaker(args)
    out = args.output or Path(args.data).resolve().parent / f"{Path(args.data).resolve().name}-transform"
    _, bad, complete = transform.local(Path(args.data), Path(out), model=args.model, mode=args.local, port=args.port,
                                       max_concurrent=args.max_concurrent, stop_on_bad=args.stop_on_bad,
                                       resume=args.resume)
    if bad:  # as SageMaker's job: every picture tried, the answers kept, the job failed
        print(f"error: {len(bad)} picture(s) refused (listed above): the job failed, as SageMaker's would; "
              "the other pictures have their answers", file=sys.stderr)
    return 2 if bad or not complete else 0


def transform_sagemaker(args):
    """A batch transform job: the deploy recipe's Model, one picture per request, `<key>.out` per picture."""
    if not args.data.startswith("s3://"):
        raise LauncherError(f"a SageMaker transform job reads its pictures from S3: upload {args.data} first, "
                            "or add --local to run it on this machine")
    connection = aws.Aws(args)
    with aws.errors():
        instance_type = args.instance_type or transform.TRANSFORM_INSTANCE
        max_concurrent = args.max_concurrent or transform.max_concurrent_transforms(instance_type)
        api_rules.check_max_concurrent(max_concurrent, transform.MAX_PAYLOAD_MB)
        ami = api_rules.transform_ami(instance_type)  # GPU types: a driver that runs the image's CUDA 12
        if ami:  # SDK v2's transformer has no parameter for it
            api_rules.add_to_request(connection.client("sagemaker"), "CreateTransformJob",
                                     TransformResources={"TransformAmiVersion": ami})
        training_job, model_data = model_to_serve(connection, args)
        name = args.job_name or unique_name()
        output = str(args.output) if args.output else connection.s3_uri("transform", name)
        transformer = serving_model(connection, model_data, name, args).transformer(
            instance_count=args.instance_count,
            instance_type=instance_type,
            strategy="SingleRecord",  # one picture per request
            output_path=output,
            accept="application/json",
            max_concurrent_transforms=max_concurrent,
            max_payload=transform.MAX_PAYLOAD_MB,  # the model server's own cap
            volume_kms_key=api_rules.volume_kms_key(instance_type, args.kms_key),  # none on local NVMe storage
            output_kms_key=args.kms_key,
            tags=aws.tags(training_job=training_job, model_data=model_data),
        )
        transformer.transform(args.data, data_type="S3Prefix", split_type="None", job_name=name, wait=False,
                              content_type=transform.job_content_type(transform.s3_keys(connection.client("s3"), args.data)))
        if connection.dry_run:
            return connection.finish_dry_run()
        connection.remember(transform_job=name, transform_output=output)
        print(f"Transform job {name} started ({args.instance_count} x {instance_type}): {args.data} -> {output}\n"
              f"Then: aws s3 cp --recursive {output} OUT && python launch.py transform --summarize OUT")


# -------------------------------------------------------------------------------------------- report
def cmd_report(args):
    if args.job:
        connection = aws.Aws(args)
        with aws.errors():
            out = args.out or trees.job_dir(report.REPORTS_DIR, args.job)  # one safe path component
            path, _ = report.build(report.sagemaker_job(args.job, Path(out) / "job", connection.boto), out)
    else:
        path = report.report(local=args.local, out=args.out)
    print(f"Report: {terminal.printable(path)}")


COMMANDS = {"data": cmd_data, "upload": cmd_upload, "tune": cmd_tune, "train": cmd_train, "deploy": cmd_deploy,
            "predict": cmd_predict, "delete": cmd_delete, "transform": cmd_transform, "report": cmd_report}


def main(argv=None):
    args = build_parser(__doc__).parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except LauncherError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
