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
import sys
from pathlib import Path

from image_classifier import constants
from image_classifier.contract import CONTAINER_PATHS, TENSORS_FOLDER
from image_classifier.metrics import METRIC_DEFINITIONS
from image_classifier.training.hyperparameters import Hyperparameters
from launcher import (LauncherError, api_rules, aws, endpoints, job_checks, presets, report, rollback, s3_upload,
                      scaling, terminal, transform, unique_name)
from launcher.aws_errors import errors
from launcher.cli import ENDPOINT_INSTANCE, LAST, TRAINING_INSTANCE, TUNING_JOB_PREFIX, build_parser, parse_hp
from launcher.local import client, jobs, serving, trees
from launcher.local.training import train_local
from launcher.preflight import dry_run_first
from launcher.sample_data import write_digits
from launcher.training_jobs import (TRIAL_ONLY_HYPERPARAMETERS, attach_training_job, attach_tuning_job,
                                    check_warm_start_parents, format_hp, job_inputs, sagemaker_hyperparameters,
                                    training_channels, winning_hyperparameters)
from launcher.waiting import wait_for_endpoint

# The SageMaker SDK is imported inside the recipes that use it: it takes over a second to import, which every
# local command and --help would otherwise pay. launcher.sdk is the SDK installed, v2 or v3, under the v2 names
# used here (launcher/sdk_v3.py says where each setting goes in v3's classes).
# @dry_run_first: a recipe that makes something runs as a dry run first, every request checked against
# botocore's service model, so nothing is sent unless all of it would be accepted (launcher/preflight.py).


# ---------------------------------------------------------------------------------------------- data
def cmd_data(args):
    counts = write_digits(args.dest)
    print(f"Digits sample in {args.dest}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# ------------------------------------------------------------------------------------ SageMaker recipes
# Without SageMaker's Debugger hook configuration the job writes its tensors into its output data, which
# SageMaker uploads as output.tar.gz (`report --job` reads them there).
TENSORS_IN_OUTPUT_DATA = {constants.TENSORS_DIR_ENV: str(CONTAINER_PATHS.output_data / TENSORS_FOLDER)}


def estimator(connection, hyperparameters, args, tags, checkpoints=None, debugger=False):
    """Our image as a generic SDK Estimator. `checkpoints`: where a spot job's checkpoints go in S3 (ending in `/`:
    SageMaker restores every object under the prefix into a new job, and `run1` would also match `run10`).
    `debugger` (training jobs only; tuning jobs have no field for it): SageMaker's Debugger hook, profiler and
    built-in rules. Without it the job's own tensors travel in its output data (output.tar.gz)."""
    from launcher.sdk import CollectionConfig, DebuggerHookConfig, Estimator, ProfilerConfig

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
    from launcher.sdk import ProfilerRule, Rule, rule_configs

    return [Rule.sagemaker(rule_configs.loss_not_decreasing()), Rule.sagemaker(rule_configs.overfit()),
            Rule.sagemaker(rule_configs.vanishing_gradient()), Rule.sagemaker(rule_configs.poor_weight_initialization()),
            ProfilerRule.sagemaker(rule_configs.ProfilerReport())]


# -------------------------------------------------------------------------------------------- upload
def cmd_upload(args):
    """Copy the dataset folder to S3 (only what is new or changed; --delete removes what is gone locally)."""
    # The layout the jobs need, before anything is sent (a dry run's stdout is its JSON).
    job_checks.check_local_data(args.data, out=sys.stderr if args.dry_run else sys.stdout)
    connection = aws.Aws(args)
    with errors():
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
@dry_run_first
def cmd_tune(args):
    """A hyperparameter tuning job over the learning rate and the batch size (the original project's ranges)."""
    from launcher.sdk import (CategoricalParameter, ContinuousParameter, HyperparameterTuner, WarmStartConfig,
                              WarmStartTypes)

    # Trials save no tensors and run no rules unless asked: nobody reads them.
    trial_values = {} if args.trial_debugging else dict(TRIAL_ONLY_HYPERPARAMETERS)
    given = {**trial_values, **presets.hyperparameters(args.preset, parse_hp(args.hp))}
    hyperparameters = sagemaker_hyperparameters(given, args.network_isolation)  # checked before any AWS call
    connection = aws.Aws(args)
    with errors() as on_error:
        if args.attach:
            return attach_tuning_job(connection, args.attach, on_error)
        name = args.job_name or unique_name(TUNING_JOB_PREFIX)
        data, splits, pretrained = job_inputs(connection, args, name)
        # No checkpoint location for the trials: a tuning job has one CheckpointConfig for all its trials and
        # SageMaker restores all of it into each new trial (AWS: "Resume training from a checkpoint"), so trial
        # k would download k-1 others' checkpoints. An interrupted spot trial restarts from its first epoch.
        training = estimator(connection, hyperparameters, args, tags=aws.tags(data=data), checkpoints=None)
        # The saved model's own value (the job's last line for it), maximised, or minimised for a loss.
        objective = {"MetricName": args.objective, "Type": "Minimize" if args.objective.endswith("loss") else "Maximize"}
        ranges = {
            "lr": ContinuousParameter(0.001, 0.1, scaling_type="Logarithmic"),
            "batch-size": CategoricalParameter([32, 64, 128, 256, 512]),
        }
        warm_start = None
        if args.warm_start:  # parents with the same objective and hyperparameters; a rebuilt image (or other
            # data) rules out IdenticalDataAndAlgorithm
            changed = check_warm_start_parents(connection, args.warm_start, training.image_uri, data, objective,
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


# --------------------------------------------------------------------------------------------- train
def cmd_train(args):
    if args.local:
        return train_local(args)
    return train_sagemaker(args)


@dry_run_first
def train_sagemaker(args):
    """A training job with the best tuning values, Debugger hook and profiler, on a spot instance."""
    # --preset and --hp checked before any AWS call
    sagemaker_hyperparameters(presets.hyperparameters(args.preset, parse_hp(args.hp)), args.network_isolation)
    connection = aws.Aws(args)
    with errors() as on_error:
        if args.attach:
            return attach_training_job(connection, args.attach, on_error)
        if args.builtin_rules and args.no_debugger:
            raise LauncherError("--builtin-rules needs SageMaker Debugger: drop --no-debugger (or --builtin-rules)")
        overrides = presets.hyperparameters(args.preset, {})  # the preset first: a tuning job's winners override it
        tuning_job = None
        if args.from_tuning:
            tuning_job = connection.recall("tuning_job", None if args.from_tuning == LAST else args.from_tuning,
                                           "run `python launch.py tune` or pass --from-tuning JOB")
            best, winning = winning_hyperparameters(connection, tuning_job, args.allow_interim)
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


# --------------------------------------------------------------------------------- deploy / predict
def cmd_deploy(args):
    if args.local:
        return serving.deploy(model=args.model, port=args.port, mode=args.local, detach=args.detach)
    return deploy_sagemaker(args)


def serving_model(connection, model_data, name, args):
    """Our image serving `model_data`: the one recipe behind endpoints and batch transform jobs."""
    from launcher.sdk import Model

    return Model(
        image_uri=connection.image_uri(),
        model_data=model_data,
        role=connection.role,
        name=name,
        vpc_config=vpc_config(args),
        enable_network_isolation=args.network_isolation,
        env=scaling.serverless_environment(getattr(args, "serverless", None)),  # the memory the workers fit in
        sagemaker_session=connection.sagemaker,
    )


@dry_run_first
def deploy_sagemaker(args):
    """A real-time endpoint serving the model our image, then one sample prediction."""
    connection = aws.Aws(args)
    with errors():
        recorded = connection.state.get("endpoint")
        if recorded and args.endpoint in (None, recorded) and not connection.dry_run \
                and endpoints.endpoint_is_live(connection, recorded):
            raise LauncherError(f"endpoint {recorded} (recorded by an earlier deploy) is still up and costs money: "
                                f"remove it first (python launch.py delete --endpoint {recorded}), or pass "
                                "--endpoint NAME for a second one")
        capacity = traffic_options(connection, args)  # checked before anything is made
        training_job, model_data = endpoints.model_to_serve(connection, args)
        name = args.endpoint or unique_name()
        model = serving_model(connection, model_data, name, args)
        with endpoints.costs_until_deleted(connection, name):  # says so on every way out, Ctrl-C included
            with rollback.all_or_nothing(connection):  # a refused endpoint (config) takes its model with it
                model.deploy(
                    **capacity,
                    endpoint_name=name,
                    kms_key=endpoints.endpoint_kms_key(args),  # none on local NVMe storage
                    tags=aws.tags(training_job=training_job, model_data=model_data),
                    wait=False,
                )
            if not connection.dry_run:
                connection.remember(endpoint=name, model=name)
                print(f"Endpoint {name} is being created ({endpoints.describe_capacity(args)}); this takes a few "
                      "minutes.", flush=True)
                wait_for_endpoint(connection, name)
                print(f"Endpoint {name} is in service.")
            if args.autoscale:  # Application Auto Scaling takes only an endpoint in service
                scaling.enable(connection.client("application-autoscaling"), name, *scaling.parse_autoscale(args.autoscale),
                               args.target_invocations)
                if not connection.dry_run:
                    print(f"Autoscaling {args.autoscale} instances at {args.target_invocations:g} invocations per "
                          "instance per minute.")
            if connection.dry_run:
                return connection.finish_dry_run()
            sample = args.sample_image or endpoints.sample_picture(connection.state.get("local_data"))
            if sample:
                print("Sample prediction:")
                endpoints.invoke_endpoint(connection, name, [Path(sample)], top_k=3)
            print(f"Query it: python launch.py predict IMAGE --endpoint {name}")


def traffic_options(connection, args):
    """model.deploy's capacity arguments: instances (--instance-count, or --autoscale's minimum) or a
    serverless configuration, and data capture. Checked before any endpoint is made."""
    from launcher.sdk import DataCaptureConfig, ServerlessInferenceConfig

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


def cmd_predict(args):
    if args.local:
        return client.predict(args.images, port=args.port, top_k=args.top_k, as_json=args.json)
    return predict_sagemaker(args)


def predict_sagemaker(args):
    connection = aws.Aws(args)
    with errors():
        endpoint = connection.recall("endpoint", args.endpoint, "run `python launch.py deploy` or pass --endpoint NAME")
        endpoints.invoke_endpoint(connection, endpoint, args.images, top_k=args.top_k, as_json=args.json)
        if connection.dry_run:
            connection.finish_dry_run()


def cmd_delete(args):
    if args.local:
        return serving.delete(port=args.port)
    return delete_sagemaker(args)


def delete_sagemaker(args):
    """The endpoint, its endpoint config and its model(s): everything deploy made (--all: everything tagged
    project=image-classifier, after one question)."""
    connection = aws.Aws(args)
    with errors():
        if args.all:
            return endpoints.delete_everything(connection, args.yes)
        endpoint = connection.recall("endpoint", args.endpoint, "pass --endpoint NAME (or --all)")
        endpoints.delete_endpoint(connection, endpoint)


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
    job_checks.check_transform_input(args.data)  # before the model server starts
    out = args.output or Path(args.data).resolve().parent / f"{Path(args.data).resolve().name}-transform"
    _, bad, complete = transform.local(Path(args.data), Path(out), model=args.model, mode=args.local, port=args.port,
                                       max_concurrent=args.max_concurrent, stop_on_bad=args.stop_on_bad,
                                       resume=args.resume)
    if bad:  # as SageMaker's job: every picture tried, the answers kept, the job failed
        print(f"error: {len(bad)} picture(s) refused (listed above): the job failed, as SageMaker's would; "
              "the other pictures have their answers", file=sys.stderr)
    return 2 if bad or not complete else 0


@dry_run_first
def transform_sagemaker(args):
    """A batch transform job: the deploy recipe's Model, one picture per request, `<key>.out` per picture."""
    if not args.data.startswith("s3://"):
        raise LauncherError(f"a SageMaker transform job reads its pictures from S3: upload {args.data} first, "
                            "or add --local to run it on this machine")
    connection = aws.Aws(args)
    with errors():
        instance_type = args.instance_type or transform.TRANSFORM_INSTANCE
        max_concurrent = args.max_concurrent or transform.max_concurrent_transforms(instance_type)
        api_rules.check_max_concurrent(max_concurrent, transform.MAX_PAYLOAD_MB)
        ami = api_rules.transform_ami(instance_type)  # GPU types: a driver that runs the image's CUDA 12
        if ami:  # SDK v2's transformer has no parameter for it
            api_rules.add_to_request(connection.client("sagemaker"), "CreateTransformJob",
                                     TransformResources={"TransformAmiVersion": ami})
        data = s3_upload.folder_uri(args.data)  # that folder, not its siblings (photos-old for photos)
        pictures = transform.s3_keys(connection.client("s3"), data)
        if not pictures and not connection.dry_run:
            raise LauncherError(f"no objects in {data}: a transform job reads that folder (and those below it)")
        content_type = transform.job_content_type(pictures)
        training_job, model_data = endpoints.model_to_serve(connection, args)
        name = args.job_name or unique_name()
        output = str(args.output) if args.output else connection.s3_uri("transform", name)
        with rollback.all_or_nothing(connection):  # a refused transform job takes its Model with it
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
            transformer.transform(data, data_type="S3Prefix", split_type="None", job_name=name, wait=False,
                                  content_type=content_type)
        if connection.dry_run:
            return connection.finish_dry_run()
        connection.remember(transform_job=name, transform_output=output)
        print(f"Transform job {name} started ({args.instance_count} x {instance_type}): {data} -> {output}\n"
              f"Then: aws s3 cp --recursive {output} OUT && python launch.py transform --summarize OUT")


# ------------------------------------------------------------------------------------------ local jobs
def cmd_jobs(args):
    jobs.print_jobs(args.jobs_dir)


def cmd_clean(args):
    jobs.clean(args.jobs_dir, args.names, args.older_than, args.yes)


# -------------------------------------------------------------------------------------------- report
def cmd_report(args):
    if not args.local:
        connection = aws.Aws(args)
        with errors():
            out = args.out or trees.job_dir(report.REPORTS_DIR, args.job)  # one safe path component
            path, _ = report.build(report.sagemaker_job(args.job, Path(out) / "job", connection.boto), out)
    else:
        path = report.report(local=args.job, out=args.out)
    print(f"Report: {terminal.printable(path)}")


COMMANDS = {"data": cmd_data, "upload": cmd_upload, "tune": cmd_tune, "train": cmd_train, "deploy": cmd_deploy,
            "predict": cmd_predict, "delete": cmd_delete, "transform": cmd_transform, "report": cmd_report,
            "jobs": cmd_jobs, "clean": cmd_clean}


def main(argv=None):
    args = build_parser(__doc__).parse_args(argv)  # refuses an option given where it does not apply
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
