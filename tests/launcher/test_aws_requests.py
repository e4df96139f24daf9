"""Every request launch.py sends is one SageMaker accepts (botocore's service model, launcher/request_checks.py)
and that the IAM table of docs/SAGEMAKER.md allows; the static hyperparameters and KMS keys each request carries."""
import json
import re

import launch
from aws_cloud import BUCKET, endpoint_answers, fails, ok, playing
from aws_cloud import cloud, uploaded  # noqa: F401 - fixtures
from moto_server import moto_url  # noqa: F401 - a fixture (the cloud fixture uses it)
from conftest import PROJECT_DIR
from image_classifier.constants import TORCH_DISTRIBUTED_HYPERPARAMETER


# -------------------------------------------------------------------------- requests SageMaker accepts
# S3 operations whose IAM action has another name (the S3 authorization reference).
S3_ACTIONS = {"ListObjectsV2": "ListBucket", "ListObjects": "ListBucket", "HeadBucket": "ListBucket",
              "HeadObject": "GetObject", "DeleteObjects": "DeleteObject", "CreateMultipartUpload": "PutObject",
              "UploadPart": "PutObject", "CompleteMultipartUpload": "PutObject"}


def documented_iam_actions():
    """{prefix: {actions}} from the docs' table of what the launcher's credentials need: a bare `Action`
    belongs to the last `prefix:` named before it in its row; `prefix:*` allows all of that service."""
    text = (PROJECT_DIR / "docs" / "SAGEMAKER.md").read_text()
    table = text.split("| service | actions | used by |", 1)[1].split("\n\n", 1)[0]
    allowed = {}
    for row in table.splitlines()[2:]:
        prefix = None
        for name in re.findall(r"`([a-z0-9-]+:[A-Za-z*]+|[A-Z][A-Za-z]+)`", row.split("|")[2]):
            if ":" in name:
                prefix, name = name.split(":")
            allowed.setdefault(prefix, set()).add(name)
    return allowed


def iam_actions_missing_from_the_docs(actions):
    allowed = documented_iam_actions()
    missing = []
    for prefix, operation in sorted(actions):
        action = S3_ACTIONS.get(operation, operation) if prefix == "s3" else operation
        if not {action, "*"} & allowed.get(prefix, set()):
            missing.append(f"{prefix}:{action}")
    return missing


def test_the_documented_iam_table_is_read_as_written():
    allowed = documented_iam_actions()
    assert {"CreateTrainingJob", "InvokeEndpoint", "UpdateEndpointWeightsAndCapacities"} <= allowed["sagemaker"]
    assert "*" in allowed["application-autoscaling"] and "CreateServiceLinkedRole" in allowed["iam"]
    assert iam_actions_missing_from_the_docs({("sagemaker", "CreateTrainingJob"), ("s3", "ListObjectsV2")}) == []
    assert iam_actions_missing_from_the_docs({("sagemaker", "StopTrainingJob"), ("kms", "Decrypt")}) == [
        "kms:Decrypt", "sagemaker:StopTrainingJob"]


def test_every_command_sends_requests_the_service_model_accepts(cloud, capsys, uploaded, tmp_path):
    """tune, train, deploy in each mode, transform, predict and delete, against moto and as dry runs: every
    request passes request_checks (required members, enums, lengths, ranges, patterns, no unknown member)."""
    from launcher.request_checks import problems

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
    assert iam_actions_missing_from_the_docs(cloud.sent.actions) == []
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
    """The launcher does not hide SDK v2's own notice (maintenance since 2026-07-06, end of support 2027-07-06);
    on v3, no notice and stdout stays JSON."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               IMAGE_URI_FILE=str(tmp_path / "none"), IMAGE_CLASSIFIER_STATE=str(tmp_path / "state.json"),
               IMAGE_CLASSIFIER_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, str(Path(launch.__file__)), "deploy", "--model-data", "s3://b/m.tar.gz",
                           "--endpoint", "e1", "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [c["operation"] for c in json.loads(done.stdout)][-1] == "CreateEndpoint"
    from launcher.sdk import SDK_MAJOR

    if SDK_MAJOR >= 3:
        assert "SDK v2" not in done.stderr
        return
    assert done.stderr.count("You are using the SageMaker Python SDK v2") == 1
    notice = next(line for line in done.stderr.splitlines() if "SageMaker Python SDK v2" in line)
    assert "SAGEMAKER_SUPPRESS_V2_WARNING=1" in notice  # on one line
    again = subprocess.run([sys.executable, str(Path(launch.__file__)), "deploy", "--model-data", "s3://b/m.tar.gz",
                            "--endpoint", "e1", "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "SDK v2" not in again.stderr  # once per machine (its marker in tmp_path)
