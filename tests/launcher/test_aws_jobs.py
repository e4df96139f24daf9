"""launch.py `upload`, `tune` and `train` on SageMaker, against moto (aws_cloud.py): the datasets, the
tuning job and the training job the launcher sends, and what a locked-down account adds to them."""
import json
import re

import pytest

import launch
from aws_cloud import (ACCOUNT, BUCKET, IMAGE, REGION, ROLE, best_job_values, endpoint_answers, fails, ok, playing,
                       push_image, run, state)
from aws_cloud import cloud, uploaded  # noqa: F401 - fixtures
from moto_server import moto_url  # noqa: F401 - a fixture (the cloud fixture uses it)
from conftest import make_dataset, needs_container_packages, train_job
from image_classifier.training.hyperparameters import Hyperparameters
from image_classifier.constants import TORCH_DISTRIBUTED_HYPERPARAMETER
from image_classifier.metrics import METRIC_DEFINITIONS, format_metrics, parse_metrics
from launcher import cli


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
    assert "needs train/ and valid/ folders" in fails(capsys, "upload", "--data", tmp_path / "pictures")
    assert cloud.sent.calls == []  # checked before any AWS call


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
    # ... and no checkpoint location: one would be shared by every trial (test_aws_preflight.py).
    assert "CheckpointConfig" not in definition
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
    import importlib

    from launcher.sdk import SDK_MAJOR

    telemetry = importlib.import_module("sagemaker.core.telemetry.telemetry_logging" if SDK_MAJOR >= 3 else
                                        "sagemaker.telemetry.telemetry_logging")
    telemetry_sent = []
    for sender in ("_send_telemetry_request", "_send_telemetry_request_sync"):  # v3 has both
        if hasattr(telemetry, sender):
            monkeypatch.setattr(telemetry, sender, lambda *a, **k: telemetry_sent.append(a))
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


@needs_container_packages
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


@needs_container_packages
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
    for key in ("other/train/001.a/x.jpg", "other/train_old/001.a/y.jpg", "other/valid/001.a/z.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    ok(capsys, "train", "--data", f"s3://{BUCKET}/other", "--no-wait")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                for c in cloud.sent.one("CreateTrainingJob")["InputDataConfig"]}
    assert channels == {"train": f"s3://{BUCKET}/other/train/", "valid": f"s3://{BUCKET}/other/valid/"}
    s3.put_object(Bucket=BUCKET, Key="empty/readme.txt", Body=b"x")
    assert "No pictures under train/" in fails(capsys, "train", "--data", f"s3://{BUCKET}/empty")


@pytest.mark.parametrize("command", [["train", "--no-wait"], ["tune"]])
def test_data_in_s3_gets_the_layout_check_before_any_job_exists(cloud, capsys, uploaded, command):
    s3 = cloud.boto.client("s3")
    # A class folder removed locally but left in S3 by an upload without --delete: valid/ has it, train/ not.
    s3.put_object(Bucket=BUCKET, Key="image-classifier/data/dogImages/valid/009.Gone/x.jpg", Body=b"x")
    error = fails(capsys, *command, "--hp", "epochs=1")
    assert f"--data s3://{BUCKET}/image-classifier/data/dogImages: The 'valid' classes do not match 'train': " \
           "missing [none], extra [" in error and "009.Gone" in error and "upload --data DIR --delete" in error
    assert not {"CreateTrainingJob", "CreateHyperParameterTuningJob"} & set(cloud.sent.operations())
    s3.delete_object(Bucket=BUCKET, Key="image-classifier/data/dogImages/valid/009.Gone/x.jpg")
    out = ok(capsys, *command, "--hp", "epochs=1", "--no-wait")
    assert f"Data: s3://{BUCKET}/image-classifier/data/dogImages (pictures: train 6, valid 3, test 3)" in out


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
