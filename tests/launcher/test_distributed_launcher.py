"""launch.py's requests for data-parallel jobs and GPU endpoints, as a dry run prints them (nothing is sent:
the endpoint is a port nobody listens on, and there are no credentials)."""
import json

import pytest

import launch
from image_classifier.constants import TORCH_DISTRIBUTED_HYPERPARAMETER
from image_classifier.cuda_check import GPU_INFERENCE_AMI
from launcher import cli, training_jobs


@pytest.fixture
def dry_run_env(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "SAGEMAKER_ROLE_ARN", "SAGEMAKER_BUCKET", "IMAGE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("IMAGE_URI_FILE", str(tmp_path / "no-image-uri"))
    monkeypatch.setenv("IMAGE_CLASSIFIER_STATE", str(tmp_path / "state.json"))
    return tmp_path


def dry_run(capsys, *argv):
    assert launch.main([*argv, "--dry-run"]) == 0, capsys.readouterr().err
    return {call["operation"]: call["params"] for call in json.loads(capsys.readouterr().out)}


def test_train_instance_count_2_sends_the_count_and_the_torchrun_runner(dry_run_env, capsys):
    job = dry_run(capsys, "train", "--data", "s3://b/d", "--instance-count", "2")["CreateTrainingJob"]
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert job["ResourceConfig"]["InstanceType"] == cli.TRAINING_INSTANCE
    assert job["HyperParameters"][TORCH_DISTRIBUTED_HYPERPARAMETER] == "true"
    # batch-size stays per GPU: the same default as on one instance.
    assert job["HyperParameters"]["batch-size"] == training_jobs.sagemaker_hyperparameters({})["batch-size"]


def test_one_instance_lets_the_job_decide_from_its_gpus(dry_run_env, capsys):
    job = dry_run(capsys, "train", "--data", "s3://b/d", "--instance-type", "ml.g5.12xlarge")["CreateTrainingJob"]
    assert job["ResourceConfig"] == {**job["ResourceConfig"], "InstanceCount": 1, "InstanceType": "ml.g5.12xlarge"}
    # Always sent (the same static set on every job): "auto", the job sees its 4 GPUs itself.
    assert job["HyperParameters"][TORCH_DISTRIBUTED_HYPERPARAMETER] == "auto"


def test_tune_instance_count_reaches_every_training_job(dry_run_env, capsys):
    tuning = dry_run(capsys, "tune", "--data", "s3://b/d", "--instance-count", "3")["CreateHyperParameterTuningJob"]
    definition = tuning["TrainingJobDefinition"]
    assert definition["HyperParameterTuningResourceConfig"]["InstanceCount"] == 3
    assert definition["StaticHyperParameters"][TORCH_DISTRIBUTED_HYPERPARAMETER] == "true"


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_a_bad_instance_count_is_refused(dry_run_env, capsys, bad):
    with pytest.raises(SystemExit) as exited:
        launch.main(["train", "--data", "s3://b/d", "--instance-count", bad, "--dry-run"])
    assert exited.value.code == 2 and "expected a whole number from 1 up" in capsys.readouterr().err


@pytest.mark.parametrize("instance_type", ["ml.g4dn.xlarge", "ml.g6.2xlarge", "ml.p4d.24xlarge"])
def test_deploy_on_a_gpu_type_sends_the_inference_ami(dry_run_env, capsys, instance_type):
    calls = dry_run(capsys, "deploy", "--model-data", "s3://b/model.tar.gz", "--endpoint", "e1",
                    "--instance-type", instance_type)
    variant, = calls["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["InstanceType"] == instance_type and variant["InferenceAmiVersion"] == GPU_INFERENCE_AMI


def test_inference_ami_flag_overrides_the_default(dry_run_env, capsys):
    calls = dry_run(capsys, "deploy", "--model-data", "s3://b/model.tar.gz", "--endpoint", "e1",
                    "--instance-type", "ml.g5.xlarge", "--inference-ami", "al2-ami-sagemaker-inference-gpu-2-1")
    assert calls["CreateEndpointConfig"]["ProductionVariants"][0]["InferenceAmiVersion"] == \
        "al2-ami-sagemaker-inference-gpu-2-1"


def test_cpu_endpoints_send_no_ami_and_refuse_the_flag(dry_run_env, capsys):
    calls = dry_run(capsys, "deploy", "--model-data", "s3://b/model.tar.gz", "--endpoint", "e1")
    assert "InferenceAmiVersion" not in calls["CreateEndpointConfig"]["ProductionVariants"][0]
    assert launch.main(["deploy", "--model-data", "s3://b/m.tar.gz", "--endpoint", "e1", "--inference-ami",
                        "al2-ami-sagemaker-inference-gpu-3-1", "--dry-run"]) == 1
    assert "applies to GPU instance types" in capsys.readouterr().err
