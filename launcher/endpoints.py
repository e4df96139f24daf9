"""Endpoints and the models behind them: which model to serve, querying an endpoint, and removing what
`deploy` made (one endpoint, or everything tagged with the project).

launch.py's `deploy` and `transform` configure the Model, its capacity and the transformer; this module finds
their inputs, says what an endpoint costs until it is gone, and cleans up.
"""
import contextlib
import json
from pathlib import Path

from image_classifier import constants

from . import LauncherError, api_rules, aws, scaling
from .cli import ENDPOINT_INSTANCE
from .local import client as local_client


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


def sample_picture(local_data):
    """A picture of the uploaded dataset's test (or valid) split, for deploy's first prediction."""
    for split in ("test", "valid"):
        folder = Path(local_data or "/nonexistent") / split
        if folder.is_dir():
            return next((p for p in sorted(folder.rglob("*")) if p.suffix.lower() in constants.IMAGE_EXTENSIONS), None)
    return None


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


def invoke_endpoint(connection, endpoint, images, top_k, as_json=False):
    """Each picture's raw bytes as image/jpeg (or its own type), the endpoint's JSON answer back."""
    from .sdk import invoke_endpoint as invoke

    for path in map(Path, images):
        if not path.is_file():
            raise LauncherError(f"{path}: no such file")
        answer = invoke(connection.sagemaker, endpoint, path.read_bytes(), local_client.content_type_of(path),
                        custom_attributes=f"top_k={top_k}")
        if connection.dry_run:
            continue
        print(json.dumps(answer) if as_json else local_client.format_table(path, answer["predictions"][0]))


def delete_everything(connection, yes):
    """Every endpoint (with its scaling), endpoint config and model tagged project=image-classifier, after one
    confirmation."""
    client = connection.client("sagemaker")
    found = project_resources(connection)
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



def delete_endpoint(connection, endpoint):
    """The endpoint, its scaling, its endpoint config and its model(s): everything deploy made."""
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


def project_resources(connection):
    """[(kind, name)] of the endpoints, endpoint configs and models tagged project=image-classifier."""
    client = connection.client("sagemaker")
    kinds = (("endpoint", "list_endpoints", "Endpoints", "EndpointName", "EndpointArn"),
             ("endpoint config", "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName",
              "EndpointConfigArn"),
             ("model", "list_models", "Models", "ModelName", "ModelArn"))
    found = []
    for kind, operation, key, name_key, arn_key in kinds:
        for page in client.get_paginator(operation).paginate():
            for item in page.get(key, []):
                tags = client.list_tags(ResourceArn=item[arn_key]).get("Tags", [])
                if aws.PROJECT_TAG in tags:
                    found.append((kind, item[name_key]))
    return found


@contextlib.contextmanager
def costs_until_deleted(connection, endpoint):
    """From the CreateEndpoint request on, every way out (success, error, Ctrl-C) says that the endpoint
    costs money until it is deleted, and how; not when SageMaker refused the request (nothing was made)."""
    created = []
    events = connection.client("sagemaker").meta.events
    handler_id = f"costs-{endpoint}"

    def refused(http_response, **_):
        if http_response.status_code >= 300:
            created.clear()

    events.register("before-call.sagemaker.CreateEndpoint", lambda **_: created.append(True), unique_id=handler_id)
    events.register("after-call.sagemaker.CreateEndpoint", refused, unique_id=handler_id + "-refused")
    try:
        yield
    finally:
        events.unregister("before-call.sagemaker.CreateEndpoint", unique_id=handler_id)
        events.unregister("after-call.sagemaker.CreateEndpoint", unique_id=handler_id + "-refused")
        if created and not connection.dry_run:
            print(f"Endpoint {endpoint} costs money until you delete it: python launch.py delete --endpoint "
                  f"{endpoint}", flush=True)


def endpoint_is_live(connection, name):
    client = connection.client("sagemaker")
    try:
        status = client.describe_endpoint(EndpointName=name)["EndpointStatus"]
    except client.exceptions.ClientError as error:
        if "Could not find" in str(error):
            return False
        raise
    return status not in ("Deleting", "Failed")

