"""launch.py on SageMaker, against moto in server mode on 127.0.0.1 (a real AWS API emulator, no account).

moto stores and returns the jobs, models and endpoints faithfully, but drops ProfilerConfig, overwrites
MetricDefinitions, completes jobs at once and fakes the best tuning job: so the tests assert on the requests
the launcher sends (recorded with boto3's `provide-client-params` event) and use the server for the
create / describe / delete flow. Where AWS would answer something moto cannot (a failed job, an expired
token), a boto3 event handler plays that answer. Every request of every test here (and of the tests that use
the `cloud` fixture) is checked against botocore's service model as strictly as SageMaker checks it
(request_validator.py): a test that sends a request SageMaker would refuse fails.
"""
import io
import json
import re
import socket

import pytest
from botocore.exceptions import ClientError

import launch
from conftest import PROJECT_DIR, make_dataset, train_job
from moto_server import moto_url, reset  # noqa: F401 - moto_url is a fixture
from request_validator import RequestChecker
from image_classifier.config import Hyperparameters
from image_classifier.constants import TORCH_DISTRIBUTED_HYPERPARAMETER
from image_classifier.metrics import METRIC_DEFINITIONS, format_metrics, parse_metrics
from launcher import aws, cli

ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
BUCKET = "test-bucket"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/image-classifier:latest"


# ------------------------------------------------------------------------------------------ fixtures
class Sent:
    """The API calls the launcher makes, as it passes them to boto3 (before moto sees them)."""

    def __init__(self):
        self.calls = []
        self.actions = set()  # (IAM service prefix, operation): what the caller's credentials must allow
        self.handlers = []  # (event, handler) added to every session the launcher makes
        self.checker = RequestChecker()  # each request against botocore's service model

    def attach(self, boto_session):
        self.checker.attach(boto_session)
        boto_session.events.register(
            "provide-client-params",
            lambda params, model, **_: self.calls.append((model.name, json.loads(json.dumps(params, default=str)))))
        boto_session.events.register(
            "provide-client-params",
            lambda model, **_: self.actions.add((model.service_model.signing_name, model.name)))
        for event, handler in self.handlers:
            boto_session.events.register(event, handler)

    def operations(self):
        return [name for name, _ in self.calls]

    def one(self, operation):
        found = [params for name, params in self.calls if name == operation]
        assert len(found) == 1, (operation, self.operations())
        return found[0]


@pytest.fixture
def cloud(moto_url, tmp_path, monkeypatch):
    """A fresh emulated account: bucket, ECR repository with the image, launcher settings in the environment."""
    import boto3

    reset(moto_url)
    for name in ("IMAGE_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("SAGEMAKER_BUCKET", BUCKET)
    monkeypatch.setenv("IMAGE_URI_FILE", str(tmp_path / "no-image-uri"))
    monkeypatch.setenv("IMAGE_CLASSIFIER_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("LAUNCHER_POLL_SECONDS", "0.01")
    import sagemaker.session

    # The SDK's log follower sleeps a fixed 5 s before its first look at a job; moto's jobs are done at once.
    wait_until = sagemaker.session._wait_until
    monkeypatch.setattr(sagemaker.session, "_wait_until", lambda fn, poll=5: wait_until(fn, poll=0.01))

    session = boto3.Session(region_name=REGION)
    session.client("s3").create_bucket(Bucket=BUCKET)
    session.client("ecr").create_repository(repositoryName="image-classifier")

    sent = Sent()
    make_session = aws.new_boto_session

    def recorded_session(region, dry_run):
        boto_session = make_session(region, dry_run)
        sent.attach(boto_session)
        return boto_session

    monkeypatch.setattr(aws, "new_boto_session", recorded_session)
    cloud = type("Cloud", (), {"url": moto_url, "sent": sent, "boto": session, "tmp": tmp_path})
    push_image(cloud, "latest")
    yield cloud
    assert sent.checker.found == [], "requests SageMaker would refuse"


def push_image(cloud, tag):
    """An image in the emulated ECR repository (a manifest is all DescribeImages needs)."""
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                           "digest": "sha256:" + tag.encode().hex().ljust(64, "0")[:64]}, "layers": []}
    cloud.boto.client("ecr").put_image(repositoryName="image-classifier", imageManifest=json.dumps(manifest),
                                       imageTag=tag)


def run(capsys, *argv):
    """launch.py in-process: (exit code, stdout, stderr)."""
    code = launch.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def fails(capsys, *argv):
    """The command fails with exactly one line on stderr, no traceback; returns that line."""
    code, out, err = run(capsys, *argv)
    assert code == 1, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def state(cloud):
    return json.loads((cloud.tmp / "state.json").read_text())


def playing(cloud, operation, change):
    """Make the launcher see `change(parsed)` in the answers to `operation` (what moto cannot produce)."""
    cloud.sent.handlers.append((f"after-call.*.{operation}", lambda parsed, **_: change(parsed)))


@pytest.fixture
def uploaded(cloud, capsys):
    data = make_dataset(cloud.tmp / "dogImages", per_split={"train": 2, "valid": 1, "test": 1})
    ok(capsys, "upload", "--data", data)
    return data


def endpoint_answers(answer):
    """The endpoint's answer to InvokeEndpoint: moto's server cannot take a binary (JPEG) body."""
    from botocore.awsrequest import AWSResponse
    from botocore.response import StreamingBody

    def handler(**_):
        body = json.dumps(answer).encode()
        return AWSResponse("http://endpoint", 200, {}, None), {
            "ContentType": "application/json", "Body": StreamingBody(io.BytesIO(body), len(body))}

    return handler


def best_job_values(parsed):
    # moto's best training job has fake hyperparameters; these are what a tuning job returns (strings,
    # categorical values JSON-quoted by the SDK's framework estimators).
    parsed["BestTrainingJob"]["TrainingJobName"] = "ic-tune-best-001"
    parsed["BestTrainingJob"]["TunedHyperParameters"] = {"lr": "0.0123", "batch-size": '"128"'}


# -------------------------------------------------------------------------------------------- upload
def test_upload_copies_the_dataset_layout_and_skips_what_is_there(cloud, capsys, tmp_path):
    data = make_dataset(tmp_path / "dogImages", per_split={"train": 2, "valid": 1, "test": 1})
    out = ok(capsys, "upload", "--data", data)
    assert "12 file(s) uploaded, 0 already there" in out
    uri = f"s3://{BUCKET}/image-classifier/data/dogImages"
    keys = {o["Key"] for o in cloud.boto.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert "image-classifier/data/dogImages/train/001.Red_fox/Red_fox_00000.JPG" in keys
    assert {k.split("/")[3] for k in keys} == {"train", "valid", "test"}
    assert state(cloud)["data_s3_uri"] == uri and state(cloud)["data_splits"] == ["train", "valid", "test"]
    puts = [p for name, p in cloud.sent.calls if name == "PutObject"]
    assert len(puts) == 12 and all(p["ContentMD5"] for p in puts)  # S3 checks each body's MD5

    # Same size and MD5 -> skipped; a changed picture -> uploaded again.
    changed = data / "valid" / "002.Green_frog" / "Green_frog_00000.JPG"
    changed.write_bytes(changed.read_bytes() + b"\0")
    out = ok(capsys, "upload", "--data", data)
    assert "1 file(s) uploaded, 11 already there" in out


def test_upload_refuses_a_folder_without_train(cloud, capsys, tmp_path):
    (tmp_path / "pictures").mkdir()
    assert "has no train/ folder" in fails(capsys, "upload", "--data", tmp_path / "pictures")


# ---------------------------------------------------------------------------------------------- tune
def test_tune_sends_the_ranges_objective_and_early_stopping(cloud, capsys, uploaded):
    playing(cloud, "DescribeHyperParameterTuningJob", best_job_values)
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-parent")  # same image and data: identical warm start
    out = ok(capsys, "tune", "--max-jobs", 4, "--max-parallel-jobs", 2, "--hp", "epochs=3",
             "--job-name", "ic-tune-test", "--warm-start", "ic-tune-parent")
    request = [p for name, p in cloud.sent.calls if name == "CreateHyperParameterTuningJob"][-1]
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian" and config["TrainingJobEarlyStoppingType"] == "Auto"
    # The saved model's own value (its epoch's line is printed after each epoch; the last one is the model's).
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "best_valid_acc"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2}
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["32", "64", "128", "256", "512"]}]
    assert request["WarmStartConfig"] == {"WarmStartType": "IdenticalDataAndAlgorithm",
                                          "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "ic-tune-parent"}]}
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    static = definition["StaticHyperParameters"]
    assert "lr" not in static and "batch-size" not in static  # the tuner sets those
    assert static["epochs"] == "3" and static["weights-download"] == "true"
    # Every job has the same static set (a warm start needs it): the distribution key is always there.
    assert set(static) | {"lr", "batch-size"} == set(Hyperparameters().to_strings()) | {TORCH_DISTRIBUTED_HYPERPARAMETER}
    assert static[TORCH_DISTRIBUTED_HYPERPARAMETER] == "auto"  # one instance: the job decides from its GPUs
    # Trials save no tensors and run no rules by default (nobody reads them) ...
    assert static["debug-hook"] == "false" and static["rules"] == "false"
    # ... and a spot trial keeps its progress: the training definition carries the checkpoint folder.
    assert definition["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/image-classifier/checkpoints/ic-tune-test/"}
    assert not {"DebugHookConfig", "ProfilerConfig"} & set(definition)  # the API has no field for them
    assert definition["EnableManagedSpotTraining"] is True
    assert [c["DataSource"]["S3DataSource"]["S3Uri"] for c in definition["InputDataConfig"]] == [
        f"s3://{BUCKET}/image-classifier/data/dogImages/{s}/" for s in ("train", "valid", "test")]
    assert "Best training job: ic-tune-best-001" in out and "batch-size=128 lr=0.0123" in out
    assert state(cloud)["tuning_job"] == "ic-tune-test"
    described = cloud.boto.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="ic-tune-test")
    assert described["HyperParameterTuningJobConfig"]["Strategy"] == "Bayesian"


def test_tune_trial_debugging_and_warm_start_after_a_rebuild(cloud, capsys, uploaded):
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-parent")
    rebuilt = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/image-classifier:rebuilt"
    push_image(cloud, "rebuilt")
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-child", "--warm-start", "ic-tune-parent",
       "--image-uri", rebuilt, "--trial-debugging", "--no-spot")
    request = [p for name, p in cloud.sent.calls if name == "CreateHyperParameterTuningJob"][-1]
    # IdenticalDataAndAlgorithm requires the parent's image: a rebuilt one can only transfer what was learnt.
    assert request["WarmStartConfig"]["WarmStartType"] == "TransferLearning"
    static = request["TrainingJobDefinition"]["StaticHyperParameters"]
    assert static["debug-hook"] == "true" and static["rules"] == "true"
    # Trials have no Debugger configuration: their tensors travel in their output data.
    assert request["TrainingJobDefinition"]["Environment"] == launch.TENSORS_IN_OUTPUT_DATA
    assert "CheckpointConfig" not in request["TrainingJobDefinition"]  # on-demand: nothing interrupts it


def test_tune_can_minimise_valid_loss(cloud, capsys, uploaded):
    ok(capsys, "tune", "--objective", "best_valid_loss", "--strategy", "Random", "--no-wait")
    config = cloud.sent.one("CreateHyperParameterTuningJob")["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "best_valid_loss"}
    assert config["Strategy"] == "Random"


# --------------------------------------------------------------------------------------------- train
def test_train_from_tuning_sends_the_estimator_the_launcher_configures(cloud, capsys, uploaded, monkeypatch):
    import sagemaker.telemetry.telemetry_logging as telemetry

    telemetry_sent = []
    monkeypatch.setattr(telemetry, "_send_telemetry_request", lambda *a, **k: telemetry_sent.append(a))
    playing(cloud, "DescribeHyperParameterTuningJob", best_job_values)
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-test")
    out = ok(capsys, "train", "--from-tuning", "--hp", "epochs=3", "--hp", "lr=0.02", "--job-name", "ic-train-1")

    request = cloud.sent.one("CreateTrainingJob")
    assert request["TrainingJobName"] == "ic-train-1" and request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"]["TrainingImage"] == IMAGE  # derived from STS's account
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    # defaults < best tuning job < --hp, all strings
    expected = Hyperparameters().to_strings()
    expected.update({"weights-download": "true", "batch-size": "128", "lr": "0.02", "epochs": "3",
                     TORCH_DISTRIBUTED_HYPERPARAMETER: "auto"})
    assert request["HyperParameters"] == expected
    assert [(c["ChannelName"], c["DataSource"]["S3DataSource"]["S3Uri"]) for c in request["InputDataConfig"]] == [
        (s, f"s3://{BUCKET}/image-classifier/data/dogImages/{s}/") for s in ("train", "valid", "test")]
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/image-classifier/checkpoints/ic-train-1/"}
    stopping = request["StoppingCondition"]
    assert stopping["MaxRuntimeInSeconds"] == cli.MAX_RUN_SECONDS
    assert stopping["MaxWaitTimeInSeconds"] == 2 * cli.MAX_RUN_SECONDS
    hook = request["DebugHookConfig"]
    assert hook["S3OutputPath"] == f"s3://{BUCKET}/image-classifier/tensors"
    intervals = {c["CollectionName"]: c["CollectionParameters"]["save_interval"] for c in hook["CollectionConfigurations"]}
    defaults = Hyperparameters()
    assert intervals == {"losses": str(defaults.debug_loss_interval), "weights": str(defaults.debug_tensor_interval),
                         "gradients": str(defaults.debug_tensor_interval), "biases": str(defaults.debug_tensor_interval)}
    assert int(intervals["losses"]) < int(intervals["weights"])  # losses often, tensors sparsely
    assert request["ProfilerConfig"] == {"S3OutputPath": f"s3://{BUCKET}/image-classifier/profiler",
                                         "DisableProfiler": False, "ProfilingIntervalInMilliseconds": 500}
    assert "DebugRuleConfigurations" not in request and "ProfilerRuleConfigurations" not in request
    assert {"Key": "image-classifier:tuning-job", "Value": "ic-tune-test"} in request["Tags"]

    # The job ran (moto completes it at once): the launcher reports it and records it for deploy.
    model_data = f"s3://{BUCKET}/image-classifier/jobs/ic-train-1/output/model.tar.gz"
    assert "Training job ic-train-1 completed" in out and f"Model data: {model_data}" in out
    assert state(cloud)["training_job"] == "ic-train-1" and state(cloud)["model_data"] == model_data
    tags = cloud.boto.client("sagemaker").list_tags(
        ResourceArn=f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/ic-train-1")["Tags"]
    assert {"Key": "image-classifier:tuning-job", "Value": "ic-tune-test"} in tags
    assert telemetry_sent == []  # the SDK's telemetry is off


def test_train_builtin_rules_only_behind_the_flag(cloud, capsys, uploaded):
    ok(capsys, "train", "--builtin-rules", "--no-spot", "--no-wait", "--hp", "debug-hook=false")
    request = cloud.sent.one("CreateTrainingJob")
    rules = {r["RuleConfigurationName"] for r in request["DebugRuleConfigurations"]}
    assert {"LossNotDecreasing", "VanishingGradient"} <= rules
    assert request["ProfilerRuleConfigurations"][0]["RuleConfigurationName"].startswith("ProfilerReport")
    assert "DebugHookConfig" not in request  # debug-hook=false: no tensors
    assert not request.get("EnableManagedSpotTraining") and "CheckpointConfig" not in request


@pytest.mark.slow  # one tiny real training run (shared with other tests through the session fixture)
def test_sent_metric_definitions_parse_the_real_training_log(cloud, capsys, uploaded, trained_model_dir):
    ok(capsys, "train", "--no-wait")
    definitions = cloud.sent.one("CreateTrainingJob")["AlgorithmSpecification"]["MetricDefinitions"]
    log = (trained_model_dir.parent / "train.log").read_text().splitlines()
    found = {}
    for definition in definitions:  # as SageMaker applies them to the job's log
        for line in log:
            match = re.search(definition["Regex"], line)
            if match:
                found.setdefault(definition["Name"], []).append(float(match.group(1)))
    for name in ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "images_per_sec", "test_acc"):
        assert name in found, (name, log[-20:])
    assert all(0 <= v <= 1 for v in found["valid_acc"] + found["test_acc"])
    # and they tell apart keys that end alike, on the formatter's own line
    line = format_metrics(epoch=2, train_loss=0.5, train_acc=0.75, valid_loss=0.25, valid_acc=0.875)
    values = {d["Name"]: re.search(d["Regex"], line) for d in definitions}
    assert float(values["valid_loss"].group(1)) == 0.25 and float(values["train_loss"].group(1)) == 0.5


@pytest.mark.slow  # one tiny real training run of a few epochs
def test_the_tuning_objective_is_the_value_of_the_model_the_job_saves(tmp_path):
    job, exit_code = train_job(tmp_path, {"epochs": "4"})
    assert exit_code == 0, job.log_file.read_text()[-3000:]
    found = parse_metrics(job.log_file.read_text().splitlines())  # as SageMaker reads the log
    saved = json.loads((job.dir / "model" / "model.json").read_text())["metrics"]
    assert len(found["best_valid_acc"]) == len(found["valid_acc"]) == 4  # every epoch: early stopping sees it
    # The last value (what the tuner ranks by) is the saved (best-valid_loss) epoch's, not the last epoch's.
    assert found["best_valid_loss"][-1] == pytest.approx(saved["valid_loss"], abs=1e-4)
    assert found["best_valid_acc"][-1] == found["valid_acc"][saved["best_epoch"] - 1]


# ------------------------------------------------------------------------------ deploy/predict/delete
def test_deploy_predict_delete_chain(cloud, capsys, uploaded):
    ok(capsys, "train", "--job-name", "ic-train-2")
    answer = {"predictions": [[{"label": "Red fox", "index": 0, "probability": 0.93},
                               {"label": "Blue whale", "index": 2, "probability": 0.05}]]}
    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", endpoint_answers(answer)))

    out = ok(capsys, "deploy", "--endpoint", "ic-endpoint")
    model = cloud.sent.one("CreateModel")
    assert model["ModelName"] == "ic-endpoint" and model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == state(cloud)["model_data"]
    config = cloud.sent.one("CreateEndpointConfig")
    assert config["ProductionVariants"][0]["ModelName"] == "ic-endpoint"
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"  # CPU by default
    endpoint = cloud.sent.one("CreateEndpoint")
    assert endpoint["EndpointConfigName"] == config["EndpointConfigName"]
    assert {"Key": "image-classifier:training-job", "Value": "ic-train-2"} in endpoint["Tags"]
    assert "Endpoint ic-endpoint is in service" in out and "Red fox" in out  # the sample prediction
    assert state(cloud)["endpoint"] == "ic-endpoint"

    picture = uploaded / "test" / "001.Red_fox" / "Red_fox_00000.JPG"
    out = ok(capsys, "predict", picture, "--top-k", 2)  # the endpoint comes from the state file
    invoke = [p for name, p in cloud.sent.calls if name == "InvokeEndpoint"][-1]
    assert invoke["EndpointName"] == "ic-endpoint" and invoke["ContentType"] == "image/jpeg"
    assert invoke["Accept"] == "application/json" and invoke["CustomAttributes"] == "top_k=2"
    assert "Red fox" in out and "93.00%" in out

    out = ok(capsys, "delete")
    assert "Deleted endpoint ic-endpoint, endpoint config ic-endpoint, model(s) ic-endpoint" in out
    assert cloud.sent.one("DeleteEndpoint") == {"EndpointName": "ic-endpoint"}
    assert cloud.sent.one("DeleteEndpointConfig") == {"EndpointConfigName": "ic-endpoint"}
    assert cloud.sent.one("DeleteModel") == {"ModelName": "ic-endpoint"}
    client = cloud.boto.client("sagemaker")
    assert client.list_endpoints()["Endpoints"] == [] and client.list_models()["Models"] == []
    assert "endpoint" not in state(cloud)
    assert "not found" in fails(capsys, "delete", "--endpoint", "ic-endpoint")


def test_deploy_a_given_model_data_uri(cloud, capsys):
    uri = f"s3://{BUCKET}/elsewhere/model.tar.gz"
    ok(capsys, "deploy", "--model-data", uri, "--endpoint", "ep-2", "--instance-type", "ml.g4dn.xlarge")
    assert cloud.sent.one("CreateModel")["PrimaryContainer"]["ModelDataUrl"] == uri
    assert cloud.sent.one("CreateEndpointConfig")["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
    assert "DescribeTrainingJob" not in cloud.sent.operations()


# ------------------------------------------------------------------------------------------- dry run
def test_dry_run_prints_the_calls_and_sends_nothing(cloud, capsys, tmp_path, monkeypatch):
    # No credentials, and the "AWS" endpoint is a socket nobody may connect to.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "SAGEMAKER_ROLE_ARN", "SAGEMAKER_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    data = make_dataset(tmp_path / "dogImages", per_split={"train": 1, "valid": 1, "test": 1})
    picture = data / "test" / "001.Red_fox" / "Red_fox_00000.JPG"
    commands = {
        ("upload", "--data", data): ["ListObjectsV2"] + ["PutObject"] * 9,
        ("tune", "--data", "s3://b/d"):
            ["ListObjectsV2", "GetCallerIdentity", "DescribeImages", "CreateHyperParameterTuningJob"],
        ("train", "--data", "s3://b/d", "--from-tuning", "t1"):
            ["DescribeHyperParameterTuningJob", "ListObjectsV2", "GetCallerIdentity", "DescribeImages",
             "CreateTrainingJob"],
        ("deploy", "--job", "j1", "--endpoint", "e1"):
            ["DescribeTrainingJob", "GetCallerIdentity", "DescribeImages", "CreateModel", "CreateEndpointConfig",
             "CreateEndpoint"],
        ("predict", picture, "--endpoint", "e1"): ["InvokeEndpoint"],
        ("delete", "--endpoint", "e1"):
            ["DescribeEndpoint", "DescribeEndpointConfig", "DescribeScalableTargets", "DeleteEndpoint",
             "DeleteEndpointConfig", "DeleteModel"],
    }
    try:
        for argv, operations in commands.items():
            out = ok(capsys, *argv, "--dry-run")
            calls = json.loads(out)
            assert [c["operation"] for c in calls] == operations, argv
            assert all(set(c) == {"service", "operation", "params"} for c in calls)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    finally:
        listener.close()
    assert not (cloud.tmp / "state.json").exists()  # a dry run records nothing
    created = json.loads(ok(capsys, "train", "--data", "s3://b/d", "--dry-run"))[-1]["params"]
    assert created["RoleArn"] == aws.DRY_RUN_PLACEHOLDERS["role"]
    assert created["OutputDataConfig"]["S3OutputPath"] == "s3://your-bucket/image-classifier/jobs"


# -------------------------------------------------------------------------------------------- errors
def test_no_credentials(cloud, capsys, uploaded, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert "no AWS credentials found" in fails(capsys, "train")


def test_expired_token(cloud, capsys, uploaded):
    def expired(**_):
        raise ClientError({"Error": {"Code": "ExpiredToken", "Message": "The security token included in the "
                                     "request is expired"}}, "GetCallerIdentity")

    cloud.sent.handlers.append(("before-call.sts.GetCallerIdentity", expired))
    assert "AWS credentials expired" in fails(capsys, "train")


@pytest.mark.parametrize("variable, flag", [("SAGEMAKER_ROLE_ARN", "--role"), ("SAGEMAKER_BUCKET", "--bucket"),
                                            ("AWS_REGION", "--region")])
def test_missing_setting_names_flag_and_variable(cloud, capsys, monkeypatch, variable, flag):
    monkeypatch.delenv(variable)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    line = fails(capsys, "train", "--data", "s3://b/d")
    assert flag in line and variable in line


def test_flags_win_over_the_environment(cloud, capsys, uploaded):
    role = f"arn:aws:iam::{ACCOUNT}:role/Other"
    cloud.boto.client("s3").create_bucket(Bucket="other-bucket")
    ok(capsys, "train", "--no-wait", "--role", role, "--bucket", "other-bucket", "--image-uri", IMAGE)
    request = cloud.sent.one("CreateTrainingJob")
    assert request["RoleArn"] == role and request["OutputDataConfig"]["S3OutputPath"].startswith("s3://other-bucket/")
    assert "GetCallerIdentity" not in cloud.sent.operations()  # the image URI was given


@pytest.mark.parametrize("image, words", [
    (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/image-classifier:v9", "not found in ECR"),
    (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/no-such-repo:latest", "repository 'no-such-repo' does not exist")])
def test_image_not_in_ecr_stops_before_any_job(cloud, capsys, uploaded, image, words):
    line = fails(capsys, "train", "--image-uri", image)
    assert words in line and "build_and_push.sh" in line
    assert "CreateTrainingJob" not in cloud.sent.operations()


def test_bad_hyperparameter_fails_before_any_aws_call(cloud, capsys, uploaded):
    calls_before = len(cloud.sent.calls)
    assert "Unknown hyperparameter 'learning-rate'" in fails(capsys, "train", "--hp", "learning-rate=0.1")
    assert "out of range" in fails(capsys, "tune", "--hp", "epochs=0")
    assert len(cloud.sent.calls) == calls_before


def test_failed_job_shows_its_failure_reason(cloud, capsys, uploaded):
    def failed(parsed):
        parsed.update(TrainingJobStatus="Failed", FailureReason="AlgorithmError: Unknown hyperparameter 'x'")

    playing(cloud, "DescribeTrainingJob", failed)
    line = fails(capsys, "train", "--job-name", "ic-fails")
    assert line == "error: training job ic-fails failed: AlgorithmError: Unknown hyperparameter 'x'"


def test_ctrl_c_while_waiting_says_the_job_keeps_running(cloud, capsys, uploaded):
    def interrupt(**_):
        raise KeyboardInterrupt

    cloud.sent.handlers.append(("before-call.sagemaker.DescribeTrainingJob", interrupt))
    line = fails(capsys, "train", "--job-name", "ic-long")
    assert "training job ic-long keeps running" in line
    assert "aws sagemaker stop-training-job --region us-east-1 --training-job-name ic-long" in line
    assert "aws logs tail /aws/sagemaker/TrainingJobs" in line


def test_steps_need_what_earlier_steps_record(cloud, capsys):
    assert "python launch.py upload --data DIR" in fails(capsys, "train")
    assert "python launch.py tune" in fails(capsys, "train", "--data", "s3://b/d", "--from-tuning")
    assert "--endpoint" in fails(capsys, "predict", __file__)
    assert "a SageMaker job reads its data from S3" in fails(capsys, "train", "--data", "dogImages")


# ------------------------------------------------------------------- issue 11: a real account's demands
def test_from_tuning_reproduces_the_winning_trial(cloud, capsys, uploaded):
    """The tuning job's static values (epochs=10 here) and the best trial's tuned ones, then --hp."""
    def best(parsed):
        best_job_values(parsed)
        parsed["BestTrainingJob"]["TunedHyperParameters"]["_tuning_objective_metric"] = "best_valid_acc"

    playing(cloud, "DescribeHyperParameterTuningJob", best)
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-10", "--hp", "epochs=10", "--hp", "augment=crop",
       "--instance-count", 2)
    ok(capsys, "train", "--from-tuning", "--no-wait", "--hp", "lr=0.02")
    sent = cloud.sent.one("CreateTrainingJob")["HyperParameters"]
    assert sent["epochs"] == "10" and sent["augment"] == "crop"  # static values of the tuning job
    assert sent["batch-size"] == "128" and sent["lr"] == "0.02"  # tuned value, then --hp
    # Not the platform's keys, and not the trials' debugging defaults: the training job saves its tensors. Its
    # distribution setting is its own (one instance), not the two-instance tuning job's.
    assert [k for k in sent if k.startswith(("_", "sagemaker_"))] == [TORCH_DISTRIBUTED_HYPERPARAMETER]
    assert sent[TORCH_DISTRIBUTED_HYPERPARAMETER] == "auto"
    assert sent["debug-hook"] == "true" and sent["rules"] == "true"


def test_from_tuning_refuses_an_interim_best(cloud, capsys, uploaded):
    playing(cloud, "DescribeHyperParameterTuningJob",
            lambda parsed: (best_job_values(parsed), parsed.update(HyperParameterTuningJobStatus="InProgress")))
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-running")
    line = fails(capsys, "train", "--from-tuning")
    assert "ic-tune-running is InProgress" in line and "interim" in line and "--allow-interim" in line
    assert "CreateTrainingJob" not in cloud.sent.operations()
    ok(capsys, "train", "--from-tuning", "--allow-interim", "--no-wait")
    assert cloud.sent.one("CreateTrainingJob")["HyperParameters"]["batch-size"] == "128"


def test_no_debugger_sends_neither_hook_nor_profiler(cloud, capsys, uploaded):
    ok(capsys, "train", "--no-debugger", "--no-wait", "--job-name", "ic-plain")
    request = cloud.sent.one("CreateTrainingJob")
    assert not {"DebugHookConfig", "ProfilerConfig", "DebugRuleConfigurations", "ProfilerRuleConfigurations"} & set(request)
    # The job's own tensors go into its output data (output.tar.gz), its rules run in the job.
    assert request["Environment"] == {"IMAGE_CLASSIFIER_TENSORS_DIR": "/opt/ml/output/data/tensors"}
    assert request["HyperParameters"]["debug-hook"] == "true" and request["HyperParameters"]["rules"] == "true"
    assert "--builtin-rules needs SageMaker Debugger" in fails(capsys, "train", "--no-debugger", "--builtin-rules")


def test_train_dry_run_no_debugger(cloud, capsys):
    calls = json.loads(ok(capsys, "train", "--data", "s3://b/d", "--no-debugger", "--dry-run"))
    created = calls[-1]["params"]
    assert calls[-1]["operation"] == "CreateTrainingJob"
    assert "DebugHookConfig" not in created and "ProfilerConfig" not in created


def test_builtin_rules_send_each_collection_once(cloud, capsys, uploaded):
    ok(capsys, "train", "--builtin-rules", "--no-wait")
    hook = cloud.sent.one("CreateTrainingJob")["DebugHookConfig"]
    names = [c["CollectionName"] for c in hook["CollectionConfigurations"]]
    assert len(names) == len(set(names)), names  # the SDK sent `losses` twice, with different intervals
    intervals = {c["CollectionName"]: c["CollectionParameters"].get("save_interval")
                 for c in hook["CollectionConfigurations"]}
    defaults = Hyperparameters()
    assert intervals["losses"] == str(defaults.debug_loss_interval)  # the job's own interval wins
    assert intervals["gradients"] == str(defaults.debug_tensor_interval)


def test_tune_dry_run_shows_checkpoints_and_no_debugging_in_trials(cloud, capsys, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_BUCKET")
    calls = json.loads(ok(capsys, "tune", "--data", "s3://b/d", "--job-name", "ic-tune-dry", "--dry-run"))
    definition = calls[-1]["params"]["TrainingJobDefinition"]
    assert definition["CheckpointConfig"]["S3Uri"] == "s3://your-bucket/image-classifier/checkpoints/ic-tune-dry/"
    assert definition["StaticHyperParameters"]["debug-hook"] == "false"


def test_predict_and_delete_need_no_bucket_and_report_no_role(cloud, capsys, uploaded, monkeypatch):
    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", endpoint_answers(
        {"predictions": [[{"label": "Red fox", "index": 0, "probability": 0.9}]]})))
    ok(capsys, "deploy", "--model-data", f"s3://{BUCKET}/m/model.tar.gz", "--endpoint", "ep-nobucket")
    monkeypatch.delenv("SAGEMAKER_BUCKET")
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN")
    picture = uploaded / "test" / "001.Red_fox" / "Red_fox_00000.JPG"
    assert "Red fox" in ok(capsys, "predict", picture)
    assert "Deleted endpoint ep-nobucket" in ok(capsys, "delete")
    for argv in (("predict", picture, "--endpoint", "e1"), ("delete", "--endpoint", "e1")):
        assert json.loads(ok(capsys, *argv, "--dry-run"))  # no --bucket, no placeholder needed


def test_tuning_objective_is_a_metric_the_job_prints():
    names = {d["Name"] for d in METRIC_DEFINITIONS}
    for objective in cli.build_parser()._subparsers._group_actions[0].choices["tune"]._option_string_actions[
            "--objective"].choices:
        assert objective in names
    line = format_metrics(best_valid_loss=0.25, best_valid_acc=0.875)
    found = {d["Name"]: re.search(d["Regex"], line) for d in METRIC_DEFINITIONS}
    assert float(found["best_valid_acc"].group(1)) == 0.875 and float(found["best_valid_loss"].group(1)) == 0.25
    assert found["valid_acc"] is None and found["valid_loss"] is None and found["epoch"] is None


@pytest.mark.parametrize("image, words", [
    ("image-classifier:abc", "not an ECR image URI"),  # what `build_and_push.sh --no-push` builds
    (f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/image-classifier:latest", "is in eu-west-1, the jobs run in us-east-1")])
def test_image_that_sagemaker_cannot_pull_is_refused(cloud, capsys, uploaded, image, words):
    assert words in fails(capsys, "train", "--image-uri", image)
    assert "CreateTrainingJob" not in cloud.sent.operations()


def test_china_region_image_uri_is_checked_in_ecr(cloud, capsys, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "cn-north-1")
    image = f"{ACCOUNT}.dkr.ecr.cn-north-1.amazonaws.com.cn/image-classifier:latest"
    line = fails(capsys, "deploy", "--model-data", "s3://b/m.tar.gz", "--image-uri", image)
    assert "repository 'image-classifier' does not exist" in line  # recognised as ECR, asked in its region
    assert cloud.sent.one("DescribeImages")["repositoryName"] == "image-classifier"


def test_bucket_in_another_region_is_refused(cloud, capsys, tmp_path, monkeypatch):
    import boto3

    boto3.Session(region_name="eu-west-1").client("s3").create_bucket(
        Bucket="eu-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    monkeypatch.setenv("SAGEMAKER_BUCKET", "eu-bucket")
    data = make_dataset(tmp_path / "dogImages", per_split={"train": 1})
    line = fails(capsys, "upload", "--data", data)
    assert "bucket eu-bucket is in eu-west-1, the jobs run in us-east-1" in line
    assert "is in eu-west-1" in fails(capsys, "train", "--data", f"s3://{BUCKET}/d")
    assert "PutObject" not in cloud.sent.operations()


@pytest.mark.parametrize("code, message, words", [
    ("ResourceLimitExceeded", "The account-level service limit 'ml.g4dn.xlarge for spot training job usage' is 0 "
     "Instances, with current utilization of 0 Instances and a request delta of 1 Instances.",
     ["quota 'ml.g4dn.xlarge for spot training job usage'", aws.QUOTAS_CONSOLE]),
    ("ValidationException", f"Could not assume role {ROLE}. Please ensure that the role exists and allows principal "
     "'sagemaker.amazonaws.com' to assume the role.", ["SageMaker cannot assume the role", "sagemaker.amazonaws.com"]),
])
def test_first_time_account_errors_are_one_line(cloud, capsys, uploaded, code, message, words):
    def refuse(**_):
        raise ClientError({"Error": {"Code": code, "Message": message}}, "CreateTrainingJob")

    cloud.sent.handlers.append(("before-call.sagemaker.CreateTrainingJob", refuse))
    line = fails(capsys, "train")
    assert all(word in line for word in words), line


def test_expired_credentials_while_waiting_say_how_to_reattach(cloud, capsys, uploaded):
    def expired(**_):
        raise ClientError({"Error": {"Code": "ExpiredToken", "Message": "The security token is expired"}},
                          "DescribeTrainingJob")

    cloud.sent.handlers.append(("before-call.sagemaker.DescribeTrainingJob", expired))
    line = fails(capsys, "train", "--job-name", "ic-expires")
    assert "python launch.py train --attach ic-expires" in line and "and run the command again" not in line
    cloud.sent.handlers.clear()
    out = ok(capsys, "train", "--attach", "ic-expires")
    assert "Training job ic-expires completed" in out and state(cloud)["model_data"].endswith("ic-expires/output/model.tar.gz")
    assert cloud.sent.operations().count("CreateTrainingJob") == 1  # attaching started nothing


def test_expired_credentials_while_tuning_say_how_to_reattach(cloud, capsys, uploaded):
    def expired(**_):
        raise ClientError({"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "DescribeHyperParameterTuningJob")

    cloud.sent.handlers.append(("before-call.sagemaker.DescribeHyperParameterTuningJob", expired))
    assert "python launch.py tune --attach ic-tune-exp" in fails(capsys, "tune", "--job-name", "ic-tune-exp")
    cloud.sent.handlers[:] = [("after-call.*.DescribeHyperParameterTuningJob", lambda parsed, **_: best_job_values(parsed))]
    assert "Best training job: ic-tune-best-001" in ok(capsys, "tune", "--attach", "ic-tune-exp")
    assert cloud.sent.operations().count("CreateHyperParameterTuningJob") == 1


# ------------------------------------------------------------------------------------------- endpoints
def test_a_second_deploy_refuses_while_the_first_endpoint_runs(cloud, capsys):
    model = f"s3://{BUCKET}/m/model.tar.gz"
    out = ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-1")
    assert "Endpoint ep-1 costs money until you delete it: python launch.py delete --endpoint ep-1" in out
    for argv in ((), ("--endpoint", "ep-1")):
        line = fails(capsys, "deploy", "--model-data", model, *argv)
        assert "endpoint ep-1" in line and "python launch.py delete --endpoint ep-1" in line
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-2")  # another name: a second endpoint on purpose
    assert cloud.sent.operations().count("CreateEndpoint") == 2


def test_delete_after_a_refused_second_deploy_leaves_nothing(cloud, capsys):
    """The refused deploy made nothing of its own, and `delete` removes all the first one made."""
    model = f"s3://{BUCKET}/m/model.tar.gz"
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-1")
    client = cloud.boto.client("sagemaker")
    made = (client.list_endpoints()["Endpoints"], client.list_endpoint_configs()["EndpointConfigs"],
            client.list_models()["Models"])
    assert [len(listed) for listed in made] == [1, 1, 1]
    fails(capsys, "deploy", "--model-data", model)
    fails(capsys, "deploy", "--model-data", model, "--endpoint", "ep-1")
    assert "Deleted endpoint ep-1, endpoint config ep-1, model(s) ep-1" in ok(capsys, "delete")
    assert client.list_endpoints()["Endpoints"] == []
    assert client.list_endpoint_configs()["EndpointConfigs"] == []
    assert client.list_models()["Models"] == []
    assert "endpoint" not in state(cloud)


def test_failed_sample_prediction_and_ctrl_c_still_say_what_costs(cloud, capsys, tmp_path):
    picture = make_dataset(tmp_path / "d", per_split={"test": 1}) / "test" / "001.Red_fox" / "Red_fox_00000.JPG"

    def model_error(**_):
        raise ClientError({"Error": {"Code": "ModelError", "Message": "Received server error (500)"}}, "InvokeEndpoint")

    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", model_error))
    code, out, err = run(capsys, "deploy", "--model-data", f"s3://{BUCKET}/m.tar.gz", "--endpoint", "ep-s",
                         "--sample-image", picture)
    assert code == 1 and "ModelError" in err
    assert "Endpoint ep-s costs money until you delete it" in out
    assert state(cloud)["endpoint"] == "ep-s"  # recorded before the sample prediction

    def interrupt(**_):
        raise KeyboardInterrupt

    cloud.sent.handlers[:] = [("before-call.sagemaker.DescribeEndpoint", interrupt)]
    code, out, err = run(capsys, "deploy", "--model-data", f"s3://{BUCKET}/m.tar.gz", "--endpoint", "ep-c",
                         "--image-uri", IMAGE)
    assert code == 1 and "keeps running" in err
    assert "Endpoint ep-c costs money until you delete it: python launch.py delete --endpoint ep-c" in out


def test_delete_all_removes_everything_tagged_after_one_confirmation(cloud, capsys, monkeypatch):
    model = f"s3://{BUCKET}/m/model.tar.gz"
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-1")
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-2")
    client = cloud.boto.client("sagemaker")
    client.create_model(ModelName="not-ours", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    out = ok(capsys, "delete", "--all")
    assert "endpoint: ep-1" in out and "model: ep-2" in out and "not-ours" not in out and "Nothing deleted" in out
    assert len(client.list_endpoints()["Endpoints"]) == 2
    out = ok(capsys, "delete", "--all")
    assert "Deleted 6" in out
    assert client.list_endpoints()["Endpoints"] == [] and client.list_endpoint_configs()["EndpointConfigs"] == []
    assert [m["ModelName"] for m in client.list_models()["Models"]] == ["not-ours"]
    assert "endpoint" not in state(cloud)
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-3")
    assert "Deleted 3" in ok(capsys, "delete", "--all", "--yes")  # no question asked (input() would raise)


# ----------------------------------------------------------------------------------------- data channels
def test_upload_delete_removes_what_is_gone_locally(cloud, capsys, tmp_path):
    data = make_dataset(tmp_path / "dogImages", per_split={"train": 2, "valid": 1, "test": 1})
    ok(capsys, "upload", "--data", data)
    gone = data / "train" / "001.Red_fox" / "Red_fox_00001.jpg"
    gone.unlink()
    assert ", 0 deleted" not in ok(capsys, "upload", "--data", data)  # off by default: nothing removed
    keys = lambda: {o["Key"] for o in cloud.boto.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]}  # noqa: E731
    assert "image-classifier/data/dogImages/train/001.Red_fox/Red_fox_00001.jpg" in keys()
    assert "11 already there, 1 deleted" in ok(capsys, "upload", "--data", data, "--delete")
    assert "image-classifier/data/dogImages/train/001.Red_fox/Red_fox_00001.jpg" not in keys() and len(keys()) == 11


def test_upload_delete_leaves_a_sibling_dataset_alone(cloud, capsys, tmp_path):
    """`dogImages-v2/...` starts with `dogImages` but is not under `dogImages/`: --delete must not see it."""
    data = make_dataset(tmp_path / "dogImages", per_split={"train": 2, "valid": 1, "test": 1})
    ok(capsys, "upload", "--data", data)
    s3 = cloud.boto.client("s3")
    sibling = "image-classifier/data/dogImages-v2/train/001.Red_fox/Red_fox_00000.jpg"
    s3.put_object(Bucket=BUCKET, Key=sibling, Body=b"another data set")
    assert "0 file(s) uploaded, 12 already there, 0 deleted" in ok(capsys, "upload", "--data", data, "--delete")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert sibling in keys and len(keys) == 13


def test_a_new_dataset_gets_its_own_splits_and_exact_prefixes(cloud, capsys, uploaded):
    s3 = cloud.boto.client("s3")
    for key in ("other/train/001.a/x.jpg", "other/train_old/001.a/y.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    ok(capsys, "train", "--data", f"s3://{BUCKET}/other", "--no-wait")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in cloud.sent.one("CreateTrainingJob")["InputDataConfig"]}
    assert channels == {"train": f"s3://{BUCKET}/other/train/"}  # not the splits recorded for dogImages
    s3.put_object(Bucket=BUCKET, Key="empty/readme.txt", Body=b"x")
    assert "no train/ folder under" in fails(capsys, "train", "--data", f"s3://{BUCKET}/empty")


# ------------------------------------------------------------------------------------ locked-down accounts
def test_network_options_reach_jobs_tuning_and_endpoints(cloud, capsys, uploaded):
    network = ["--subnets", "subnet-1", "subnet-2", "--security-groups", "sg-1", "--kms-key", "key-1",
               "--network-isolation"]
    code, out, err = run(capsys, "train", "--no-wait", *network)
    assert code == 0 and "--pretrained-weights" in err and "BAKE_WEIGHTS" in err  # isolated: no weights download
    request = cloud.sent.one("CreateTrainingJob")
    assert request["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    # The default ml.g4dn.xlarge has local NVMe storage: SageMaker refuses a volume key there; outputs get it.
    assert "VolumeKmsKeyId" not in request["ResourceConfig"] and request["OutputDataConfig"]["KmsKeyId"] == "key-1"
    assert "local NVMe storage" in err
    assert request["EnableNetworkIsolation"] is True and request["HyperParameters"]["weights-download"] == "false"
    ok(capsys, "tune", "--no-wait", *network)
    definition = cloud.sent.one("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    assert definition["VpcConfig"]["Subnets"] == ["subnet-1", "subnet-2"] and definition["EnableNetworkIsolation"]
    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", endpoint_answers({"predictions": [[]]})))
    ok(capsys, "deploy", "--model-data", f"s3://{BUCKET}/m.tar.gz", "--endpoint", "ep-vpc", *network)
    model = cloud.sent.one("CreateModel")
    assert model["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    assert model["EnableNetworkIsolation"] is True
    assert cloud.sent.one("CreateEndpointConfig")["KmsKeyId"] == "key-1"
    assert "needs both --subnets and --security-groups" in fails(capsys, "train", "--subnets", "subnet-1")


def test_the_sdk_config_file_applies(cloud, capsys, uploaded, monkeypatch, tmp_path):
    config = tmp_path / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  TrainingJob:\n    VpcConfig:\n"
                      "      SecurityGroupIds: [sg-org]\n      Subnets: [subnet-org]\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))
    ok(capsys, "train", "--no-wait")
    assert cloud.sent.one("CreateTrainingJob")["VpcConfig"] == {"Subnets": ["subnet-org"], "SecurityGroupIds": ["sg-org"]}
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  TrainingJob:\n    NoSuchField: 1\n")
    assert "config file is not valid" in fails(capsys, "train", "--no-wait")


def test_pretrained_weights_are_sent_as_the_pretrained_channel(cloud, capsys, uploaded, tmp_path):
    weights = tmp_path / "resnet50-own.pth"
    weights.write_bytes(b"state dict bytes")
    ok(capsys, "train", "--no-wait", "--job-name", "ic-own", "--pretrained-weights", weights, "--network-isolation")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in cloud.sent.one("CreateTrainingJob")["InputDataConfig"]}
    assert channels["pretrained"] == f"s3://{BUCKET}/image-classifier/pretrained/ic-own/"
    body = cloud.boto.client("s3").get_object(Bucket=BUCKET, Key="image-classifier/pretrained/ic-own/resnet50-own.pth")
    assert body["Body"].read() == b"state dict bytes"
    ok(capsys, "tune", "--no-wait", "--pretrained-weights", "s3://weights/resnet50.pth")
    definition = cloud.sent.one("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in definition["InputDataConfig"]}[
        "pretrained"] == "s3://weights/resnet50.pth"
    assert "expected a .pth/.pt state_dict" in fails(capsys, "train", "--pretrained-weights", tmp_path / "nothing")


# -------------------------------------------------------------------------- requests SageMaker accepts
# S3 operations whose IAM action has another name (the S3 authorization reference).
S3_ACTIONS = {"ListObjectsV2": "ListBucket", "ListObjects": "ListBucket", "HeadBucket": "ListBucket",
              "HeadObject": "GetObject", "DeleteObjects": "DeleteObject", "CreateMultipartUpload": "PutObject",
              "UploadPart": "PutObject", "CompleteMultipartUpload": "PutObject"}


def readme_iam_actions():
    """{prefix: {actions}} from README's table of what the launcher's credentials need: a bare `Action`
    belongs to the last `prefix:` named before it in its row; `prefix:*` allows all of that service."""
    text = (PROJECT_DIR / "README.md").read_text()
    table = text.split("| service | actions | used by |", 1)[1].split("\n\n", 1)[0]
    allowed = {}
    for row in table.splitlines()[2:]:
        prefix = None
        for name in re.findall(r"`([a-z0-9-]+:[A-Za-z*]+|[A-Z][A-Za-z]+)`", row.split("|")[2]):
            if ":" in name:
                prefix, name = name.split(":")
            allowed.setdefault(prefix, set()).add(name)
    return allowed


def iam_actions_missing_from_readme(actions):
    allowed = readme_iam_actions()
    missing = []
    for prefix, operation in sorted(actions):
        action = S3_ACTIONS.get(operation, operation) if prefix == "s3" else operation
        if not {action, "*"} & allowed.get(prefix, set()):
            missing.append(f"{prefix}:{action}")
    return missing


def test_the_readme_iam_table_is_read_as_written():
    allowed = readme_iam_actions()
    assert {"CreateTrainingJob", "InvokeEndpoint", "UpdateEndpointWeightsAndCapacities"} <= allowed["sagemaker"]
    assert "*" in allowed["application-autoscaling"] and "CreateServiceLinkedRole" in allowed["iam"]
    assert iam_actions_missing_from_readme({("sagemaker", "CreateTrainingJob"), ("s3", "ListObjectsV2")}) == []
    assert iam_actions_missing_from_readme({("sagemaker", "StopTrainingJob"), ("kms", "Decrypt")}) == [
        "kms:Decrypt", "sagemaker:StopTrainingJob"]


def test_every_command_sends_requests_the_service_model_accepts(cloud, capsys, uploaded, tmp_path):
    """tune, train, deploy in each mode, transform, predict and delete, against moto and as dry runs: every
    request passes request_validator (required members, enums, lengths, ranges, patterns, no unknown member)."""
    from request_validator import problems

    model_data = f"s3://{BUCKET}/jobs/j1/output/model.tar.gz"
    picture = uploaded / "test" / "001.Red_fox" / "Red_fox_00000.JPG"
    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", endpoint_answers({"predictions": [[]]})))
    vpc = ["--subnets", "subnet-1", "--security-groups", "sg-1", "--kms-key", "key-1"]
    commands = [
        ["tune", "--no-wait", "--job-name", "ic-tune-all", "--instance-count", 2, *vpc],
        ["tune", "--no-wait", "--job-name", "ic-tune-warm", "--warm-start", "ic-tune-all", "--instance-count", 2],
        ["train", "--no-wait", "--job-name", "ic-train-all", "--instance-type", "ml.m5.xlarge", *vpc],
        ["train", "--no-wait", "--job-name", "ic-train-nodebug", "--no-debugger", "--network-isolation"],
        ["deploy", "--model-data", model_data, "--endpoint", "ep-plain", "--data-capture", 20, *vpc],
        ["deploy", "--model-data", model_data, "--endpoint", "ep-gpu", "--instance-type", "ml.g4dn.xlarge"],
        ["deploy", "--model-data", model_data, "--endpoint", "ep-serverless", "--serverless", 2048],
        ["deploy", "--model-data", model_data, "--endpoint", "ep-scale", "--autoscale", "1:3"],
        ["predict", picture, "--endpoint", "ep-plain"],
        ["transform", "--data", f"s3://{BUCKET}/image-classifier/data/dogImages/test/", "--model-data", model_data,
         "--job-name", "ic-batch-all", "--instance-type", "ml.g4dn.xlarge", "--kms-key", "key-1"],
        ["delete", "--endpoint", "ep-scale"],
        ["delete", "--endpoint", "ep-serverless"],
    ]
    for argv in commands:
        ok(capsys, *argv)
    for argv in commands:  # the dry runs' printed requests, checked the same way
        for call in json.loads(ok(capsys, *argv, "--dry-run")):
            assert problems(call["service"], call["operation"], call["params"]) == [], argv
    assert iam_actions_missing_from_readme(cloud.sent.actions) == []
    checked = cloud.sent.checker.checked
    for operation in ("CreateHyperParameterTuningJob", "CreateTrainingJob", "CreateModel", "CreateEndpointConfig",
                      "CreateEndpoint", "RegisterScalableTarget", "PutScalingPolicy", "InvokeEndpoint",
                      "CreateTransformJob", "DeleteEndpoint", "DeregisterScalableTarget", "DeleteModel"):
        assert checked.get(operation), operation
    assert cloud.sent.checker.found == []


def test_warm_start_refuses_a_parent_with_another_objective_or_hyperparameter_set(cloud, capsys, uploaded):
    ok(capsys, "tune", "--no-wait", "--job-name", "ic-tune-loss", "--objective", "best_valid_loss")
    line = fails(capsys, "tune", "--no-wait", "--job-name", "ic-tune-acc", "--warm-start", "ic-tune-loss")
    assert "it optimised Minimize best_valid_loss, this job Maximize best_valid_acc" in line
    assert "same objective" in line

    def older_launcher(parsed):  # a parent tuned before the distribution key was always sent
        parsed["TrainingJobDefinition"]["StaticHyperParameters"].pop(TORCH_DISTRIBUTED_HYPERPARAMETER)

    playing(cloud, "DescribeHyperParameterTuningJob", older_launcher)
    line = fails(capsys, "tune", "--no-wait", "--job-name", "ic-tune-acc", "--warm-start", "ic-tune-loss",
                 "--objective", "best_valid_loss")
    assert f"differing: {TORCH_DISTRIBUTED_HYPERPARAMETER}" in line
    assert len([name for name in cloud.sent.operations() if name == "CreateHyperParameterTuningJob"]) == 1


def test_one_instance_with_several_gpus_sends_the_same_static_set(cloud, capsys, uploaded):
    """The distribution key goes out on every job ("auto" on one instance: the job decides from its GPUs)."""
    ok(capsys, "train", "--no-wait", "--job-name", "ic-g5-12", "--instance-type", "ml.g5.12xlarge")
    ok(capsys, "train", "--no-wait", "--job-name", "ic-two", "--instance-count", 2)
    one, two = [p["HyperParameters"] for name, p in cloud.sent.calls if name == "CreateTrainingJob"]
    assert one[TORCH_DISTRIBUTED_HYPERPARAMETER] == "auto" and two[TORCH_DISTRIBUTED_HYPERPARAMETER] == "true"
    assert set(one) == set(two)


def test_kms_key_on_volumes_only_where_the_type_has_no_local_storage(cloud, capsys, uploaded):
    ok(capsys, "train", "--no-wait", "--instance-type", "ml.m5.xlarge", "--kms-key", "key-1")
    request = cloud.sent.one("CreateTrainingJob")
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == "key-1" and request["OutputDataConfig"]["KmsKeyId"] == "key-1"
    ok(capsys, "tune", "--no-wait", "--kms-key", "key-1")  # the default ml.g4dn.xlarge: NVMe
    definition = cloud.sent.one("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    assert "VolumeKmsKeyId" not in definition["HyperParameterTuningResourceConfig"]
    assert definition["OutputDataConfig"]["KmsKeyId"] == "key-1"
    # An endpoint's storage key too: CreateEndpointConfig fails with one on a type with local NVMe storage.
    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", endpoint_answers({"predictions": [[]]})))
    ok(capsys, "deploy", "--model-data", f"s3://{BUCKET}/m.tar.gz", "--endpoint", "ep-nvme",
       "--instance-type", "ml.g4dn.xlarge", "--kms-key", "key-1")
    assert "KmsKeyId" not in cloud.sent.one("CreateEndpointConfig")


def test_the_sdks_lifecycle_warning_is_shown_once_and_stdout_stays_json(tmp_path):
    """The launcher does not hide SDK v2's own notice (maintenance since 2026-07-06, end of support 2027-07-06)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               IMAGE_URI_FILE=str(tmp_path / "none"), IMAGE_CLASSIFIER_STATE=str(tmp_path / "state.json"))
    done = subprocess.run([sys.executable, str(Path(launch.__file__)), "deploy", "--model-data", "s3://b/m.tar.gz",
                           "--endpoint", "e1", "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [c["operation"] for c in json.loads(done.stdout)][-1] == "CreateEndpoint"
    assert done.stderr.count("You are using the SageMaker Python SDK v2") == 1
    assert "SAGEMAKER_SUPPRESS_V2_WARNING=1" in done.stderr
