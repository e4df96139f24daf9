"""What reaches AWS, against moto (aws_cloud.py): nothing unless every request of the command would be accepted
(preflight.py), nothing left behind when a later request is refused (rollback.py), tag values SageMaker takes,
the exact S3 folder a transform job reads, and checkpoints that stay with their own training job."""
from botocore.exceptions import ClientError

from aws_cloud import BUCKET, fails, ok, run, state
from aws_cloud import cloud, uploaded  # noqa: F401 - fixtures
from moto_server import moto_url  # noqa: F401 - a fixture (the cloud fixture uses it)
from conftest import make_dataset
from image_classifier import constants
from image_classifier.training.environment import TrainingEnvironment
from launcher.local import trees
from launcher.request_checks import problems

MODEL_DATA = f"s3://{BUCKET}/jobs/j1/output/model.tar.gz"


def put_pictures(cloud, keys):
    for key in keys:
        cloud.boto.client("s3").put_object(Bucket=BUCKET, Key=key, Body=b"picture")


def refused(operation, code="ResourceLimitExceeded"):
    """SageMaker refusing `operation` (played: moto would accept it)."""
    def refuse(**_):
        raise ClientError({"Error": {"Code": code, "Message": "The account-level service limit 'x' is 0"}}, operation)

    return f"before-call.sagemaker.{operation}", refuse


def sagemaker_names(cloud):
    client = cloud.boto.client("sagemaker")
    return {"models": [m["ModelName"] for m in client.list_models()["Models"]],
            "configs": [c["EndpointConfigName"] for c in client.list_endpoint_configs()["EndpointConfigs"]],
            "endpoints": [e["EndpointName"] for e in client.list_endpoints()["Endpoints"]],
            "transform jobs": [j["TransformJobName"] for j in client.list_transform_jobs()["TransformJobSummaries"]]}


NOTHING = {"models": [], "configs": [], "endpoints": [], "transform jobs": []}


# ------------------------------------------------------------------------------ checked before sending
def test_a_transform_type_sagemaker_refuses_stops_the_command_before_anything_is_sent(cloud, capsys):
    put_pictures(cloud, ["photos/1.jpg"])
    line = fails(capsys, "transform", "--data", f"s3://{BUCKET}/photos/", "--model-data", MODEL_DATA,
                 "--instance-type", "ml.c5.large", "--max-concurrent", 2)
    assert "sagemaker.CreateTransformJob would be refused, so it was not sent" in line
    assert "TransformResources.InstanceType: 'ml.c5.large' is not one of the" in line
    assert cloud.sent.operations() == []  # not even the real run's reads: the dry run stopped it
    assert sagemaker_names(cloud) == NOTHING
    # Nor does the launcher's table offer it (its workers, hence MaxConcurrentTransforms, are not known).
    assert "pass --max-concurrent" in fails(capsys, "transform", "--data", f"s3://{BUCKET}/photos/",
                                            "--model-data", MODEL_DATA, "--instance-type", "ml.c5.large")


def test_the_rehearsal_is_quiet_and_its_notes_are_printed_once(cloud, capsys):
    put_pictures(cloud, ["photos/1.jpg"])
    code, out, err = run(capsys, "transform", "--data", f"s3://{BUCKET}/photos/", "--model-data", MODEL_DATA,
                         "--instance-type", "ml.g5.xlarge", "--kms-key", "key-1", "--job-name", "ic-quiet")
    assert code == 0, err
    assert err.count("note: ml.g5.xlarge has local NVMe storage") == 1
    assert out.count("Transform job ic-quiet started") == 1 and '"operation"' not in out  # no dry-run JSON
    assert [name for name in cloud.sent.operations() if name.startswith("Create")] == ["CreateModel",
                                                                                        "CreateTransformJob"]


# ------------------------------------------------------------------------------------------- rollback
def test_a_refused_transform_job_takes_its_model_with_it(cloud, capsys):
    put_pictures(cloud, ["photos/1.jpg"])
    cloud.sent.handlers.append(refused("CreateTransformJob"))
    code, _, err = run(capsys, "transform", "--data", f"s3://{BUCKET}/photos/", "--model-data", MODEL_DATA,
                       "--job-name", "ic-batch-refused")
    assert code == 1 and "Request an increase" in err
    assert "Removed Model ic-batch-refused, which this command made before it failed." in err
    assert cloud.sent.operations()[-3:] == ["CreateModel", "CreateTransformJob", "DeleteModel"]
    assert sagemaker_names(cloud) == NOTHING
    assert "transform_job" not in (state(cloud) if (cloud.tmp / "state.json").exists() else {})


def test_a_refused_endpoint_takes_its_config_and_model_with_it(cloud, capsys):
    cloud.sent.handlers.append(refused("CreateEndpoint"))
    code, out, err = run(capsys, "deploy", "--model-data", MODEL_DATA, "--endpoint", "ep-refused")
    assert code == 1 and "CreateEndpoint: the account's SageMaker quota" in err
    assert cloud.sent.operations()[-5:] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                                            "DeleteEndpointConfig", "DeleteModel"]
    assert sagemaker_names(cloud) == NOTHING
    assert "costs money" not in out + err  # there is no endpoint to pay for


# ----------------------------------------------------------------------------------------- tag values
def test_a_data_folder_with_parentheses_is_tagged_as_sagemaker_takes_it(cloud, capsys, tmp_path):
    data = make_dataset(tmp_path / "dogImages (v2)", per_split={"train": 1, "valid": 1, "test": 1})
    ok(capsys, "upload", "--data", data)
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-paren")
    ok(capsys, "train", "--no-wait", "--job-name", "ic-train-paren")
    folder = f"s3://{BUCKET}/image-classifier/data/dogImages (v2)"
    for operation in ("CreateHyperParameterTuningJob", "CreateTrainingJob"):
        request = cloud.sent.one(operation)
        assert {"Key": "image-classifier:data", "Value": folder.replace("(", "_").replace(")", "_")} in request["Tags"]
        assert problems("sagemaker", operation, request) == []
    channels = cloud.sent.one("CreateTrainingJob")["InputDataConfig"]
    assert channels[0]["DataSource"]["S3DataSource"]["S3Uri"] == f"{folder}/train/"  # the data itself: as named


# ------------------------------------------------------------------------------ the transform's folder
def test_transform_reads_the_folder_named_not_its_siblings(cloud, capsys):
    put_pictures(cloud, ["photos/1.jpg", "photos/a/2.jpg", "photos-old/3.png"])
    ok(capsys, "transform", "--data", f"s3://{BUCKET}/photos", "--model-data", MODEL_DATA, "--job-name", "ic-exact")
    job = cloud.sent.one("CreateTransformJob")
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/photos/"
    assert job["TransformInput"]["ContentType"] == "image/jpeg"  # photos-old/3.png is not one of its pictures
    assert cloud.sent.one("ListObjectsV2")["Prefix"] == "photos/"
    line = fails(capsys, "transform", "--data", f"s3://{BUCKET}/photo", "--model-data", MODEL_DATA)
    assert f"no objects in s3://{BUCKET}/photo/" in line
    assert cloud.sent.operations().count("CreateModel") == 1  # refused before any Model


# --------------------------------------------------------------------------------------- checkpoints
# SageMaker, as AWS documents it for a job with a CheckpointConfig: what the job writes under LocalPath
# (/opt/ml/checkpoints) is copied to S3Uri, and a new job (a restarted spot job, or another job with the same
# S3Uri) gets everything under S3Uri restored into LocalPath first ("Resume training from a checkpoint").
def checkpoint_tree(jobs_dir, job_name):
    """A training job's /opt/ml tree (trees.prepare_job) with the files the job keeps in its own checkpoint
    folder (TrainingEnvironment.job_checkpoint_dir: <checkpoints>/<TRAINING_JOB_NAME>/)."""
    job = trees.prepare_job(jobs_dir, job_name, {}, {})
    environment = TrainingEnvironment(base_dir=job.dir, model_dir=job.paths.model, output_dir=job.paths.output,
                                      output_data_dir=job.paths.output_data, checkpoint_dir=job.paths.checkpoints,
                                      job_name=job_name)
    environment.job_checkpoint_dir.mkdir(parents=True)
    for name in (constants.CHECKPOINT_FILE, constants.PREVIOUS_CHECKPOINT_FILE, constants.BEST_WEIGHTS_FILE):
        (environment.job_checkpoint_dir / name).write_bytes(b"weights")
    return job


def s3_folder(uri):
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix


def synced_up(cloud, request, job):
    """SageMaker copying the job's checkpoint folder to CheckpointConfig.S3Uri (nothing without one)."""
    if "CheckpointConfig" not in request:
        return
    bucket, prefix = s3_folder(request["CheckpointConfig"]["S3Uri"])
    for path in job.paths.checkpoints.rglob("*"):
        if path.is_file():
            key = prefix + path.relative_to(job.paths.checkpoints).as_posix()
            cloud.boto.client("s3").put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def restored(cloud, request):
    """What SageMaker restores into a new job of `request` before it starts: every object under S3Uri."""
    if "CheckpointConfig" not in request:
        return []
    bucket, prefix = s3_folder(request["CheckpointConfig"]["S3Uri"])
    pages = cloud.boto.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"][len(prefix):] for page in pages for item in page.get("Contents", []))


def test_a_tuning_trial_restores_no_other_trials_checkpoints(cloud, capsys, uploaded, tmp_path):
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-ckpt")
    trial = cloud.sent.one("CreateHyperParameterTuningJob")["TrainingJobDefinition"]  # every trial's request
    assert trial["EnableManagedSpotTraining"] is True and trial["StoppingCondition"]["MaxWaitTimeInSeconds"]
    synced_up(cloud, trial, checkpoint_tree(tmp_path / "trials", "ic-tune-ckpt-001-1a2b3c4d"))
    assert restored(cloud, trial) == []  # trial 2 starts with nothing of trial 1's

    # A training job keeps its own checkpoints (a spot restart resumes) and only its own: `run` is not `run-2`.
    ok(capsys, "train", "--no-wait", "--job-name", "ic-run")
    ok(capsys, "train", "--no-wait", "--job-name", "ic-run-2")
    first, second = [params for name, params in cloud.sent.calls if name == "CreateTrainingJob"]
    synced_up(cloud, first, checkpoint_tree(tmp_path / "jobs", "ic-run"))
    assert restored(cloud, first) == [f"ic-run/{name}" for name in sorted(
        (constants.BEST_WEIGHTS_FILE, constants.CHECKPOINT_FILE, constants.PREVIOUS_CHECKPOINT_FILE))]
    assert restored(cloud, second) == []
