"""launch.py against moto (aws_cloud.py) when things go wrong or nothing may be sent: dry runs, missing
settings and credentials, images and buckets SageMaker cannot use, and what a real account demands."""
import json
import re
import socket

import pytest
from botocore.exceptions import ClientError

from aws_cloud import (ACCOUNT, BUCKET, IMAGE, REGION, ROLE, best_job_values, endpoint_answers, fails, ok, playing,
                       state)
from aws_cloud import cloud, uploaded  # noqa: F401 - fixtures
from moto_server import moto_url  # noqa: F401 - a fixture (the cloud fixture uses it)
from conftest import make_dataset
from image_classifier.training.hyperparameters import Hyperparameters
from image_classifier.constants import TORCH_DISTRIBUTED_HYPERPARAMETER
from image_classifier.metrics import METRIC_DEFINITIONS, format_metrics
from launcher import aws_errors, cli, dry_run


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
    assert created["RoleArn"] == dry_run.DRY_RUN_PLACEHOLDERS["role"]
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


def test_every_missing_setting_is_named_at_once(cloud, capsys, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN")
    monkeypatch.delenv("SAGEMAKER_BUCKET")
    line = fails(capsys, "train", "--data", "s3://b/d")
    assert "missing 2 setting(s)" in line and "--role" in line and "--bucket" in line, line


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


def test_tune_dry_run_shows_spot_trials_without_checkpoints_or_debugging(cloud, capsys, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_BUCKET")
    calls = json.loads(ok(capsys, "tune", "--data", "s3://b/d", "--job-name", "ic-tune-dry", "--dry-run"))
    definition = calls[-1]["params"]["TrainingJobDefinition"]
    assert definition["EnableManagedSpotTraining"] is True and "CheckpointConfig" not in definition
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
    data = make_dataset(tmp_path / "dogImages", per_split={"train": 1, "valid": 1})
    line = fails(capsys, "upload", "--data", data)
    assert "bucket eu-bucket is in eu-west-1, the jobs run in us-east-1" in line
    assert "is in eu-west-1" in fails(capsys, "train", "--data", f"s3://{BUCKET}/d")
    assert "PutObject" not in cloud.sent.operations()


@pytest.mark.parametrize("code, message, words", [
    ("ResourceLimitExceeded", "The account-level service limit 'ml.g4dn.xlarge for spot training job usage' is 0 "
     "Instances, with current utilization of 0 Instances and a request delta of 1 Instances.",
     ["quota 'ml.g4dn.xlarge for spot training job usage'", aws_errors.QUOTAS_CONSOLE]),
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
