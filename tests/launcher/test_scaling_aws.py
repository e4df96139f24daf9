"""`deploy` for real traffic, against moto in server mode: instance count, autoscaling, serverless, data
capture, and `delete` removing the scaling policy and target. Assertions on the exact requests sent."""
import json

import pytest

from launcher import scaling
from aws_cloud import BUCKET, cloud, fails, ok  # noqa: F401 - cloud is a fixture
from moto_server import moto_url  # noqa: F401 - a fixture

MODEL_DATA = f"s3://{BUCKET}/jobs/j1/output/model.tar.gz"


def deploy(capsys, *extra):
    return ok(capsys, "deploy", "--model-data", MODEL_DATA, "--endpoint", "ep", *extra)


def test_autoscale_registers_the_variant_and_tracks_invocations_then_delete_removes_them(cloud, capsys):
    out = deploy(capsys, "--autoscale", "2:6", "--target-invocations", 300)
    variant = cloud.sent.one("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["InitialInstanceCount"] == 2 and variant["InstanceType"] == "ml.m5.large"
    target = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ep/variant/AllTraffic",
              "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
    assert cloud.sent.one("RegisterScalableTarget") == {**target, "MinCapacity": 2, "MaxCapacity": 6}
    assert cloud.sent.one("PutScalingPolicy") == {
        **target, "PolicyName": "ep-invocations-per-instance", "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 300.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": 60, "ScaleInCooldown": 300}}
    operations = cloud.sent.operations()
    assert operations.index("RegisterScalableTarget") > operations.index("DescribeEndpoint")  # once in service
    assert "Autoscaling 2:6 instances at 300 invocations" in out
    autoscaling = cloud.boto.client("application-autoscaling")
    assert len(autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]) == 1

    out = ok(capsys, "delete")
    assert cloud.sent.one("DeleteScalingPolicy") == {**target, "PolicyName": "ep-invocations-per-instance"}
    assert cloud.sent.one("DeregisterScalableTarget") == target
    operations = cloud.sent.operations()
    assert operations.index("DeregisterScalableTarget") < operations.index("DeleteEndpoint")
    assert "scaling policy ep-invocations-per-instance and its scalable target" in out
    assert autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_default_target_is_derived_from_the_measured_throughput(cloud, capsys):
    """19.74 pictures/s on 2 vCPUs (bench/serving_capacity.json, the benchmark of 2026-12-04), not 8.41."""
    measured = json.loads(scaling.CAPACITY_FILE.read_text())["pictures_per_second"]
    assert scaling.DEFAULT_TARGET_INVOCATIONS == round(measured * 60 * 0.5)
    deploy(capsys, "--autoscale", "1:3")
    policy = cloud.sent.one("PutScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    assert policy["TargetValue"] == float(round(measured * 60 * 0.5))


def test_instance_count_and_data_capture(cloud, capsys):
    deploy(capsys, "--instance-count", 3, "--data-capture", 20)
    config = cloud.sent.one("CreateEndpointConfig")
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 3
    capture = config["DataCaptureConfig"]
    assert capture["EnableCapture"] is True and capture["InitialSamplingPercentage"] == 20
    assert capture["DestinationS3Uri"] == f"s3://{BUCKET}/image-classifier/capture"
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    assert "RegisterScalableTarget" not in cloud.sent.operations()
    ok(capsys, "delete")  # no scalable target: nothing to deregister
    assert "DeregisterScalableTarget" not in cloud.sent.operations()


def test_serverless_endpoint(cloud, capsys):
    out = deploy(capsys, "--serverless", 3072, "--max-concurrency", 8)
    variant = cloud.sent.one("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 8}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    assert "serverless, 3072 MB" in out
    # serve sizes its workers (about 1.2 GB each) and the Java heap by the endpoint's memory, not by the vCPUs.
    container = cloud.sent.one("CreateModel")["PrimaryContainer"]
    assert container["Environment"] == {"IMAGE_CLASSIFIER_MEMORY_MB": "3072"}


def test_an_instance_endpoint_sends_no_memory_size(cloud, capsys):
    deploy(capsys)
    assert not cloud.sent.one("CreateModel")["PrimaryContainer"].get("Environment")  # serve reads the instance's


@pytest.mark.parametrize("extra, words", [
    (["--serverless", 3000], "2048, 3072, 4096, 5120, 6144 MB"),
    (["--serverless", 1024], "does not fit"),
    (["--serverless", 2048, "--instance-type", "ml.g4dn.xlarge"], "no instances"),
    (["--serverless", 2048, "--data-capture", 10], "serverless endpoints do not support data capture"),
    (["--serverless", 2048, "--network-isolation"], "do not support network isolation (--network-isolation)"),
    (["--serverless", 2048, "--subnets", "subnet-1", "--security-groups", "sg-1"], "do not support a VPC"),
    (["--autoscale", "3:2"], "MIN:MAX"),
    (["--autoscale", "two"], "MIN:MAX"),
    (["--data-capture", 0], "1 to 100"),
])
def test_bad_traffic_options_fail_before_any_endpoint(cloud, capsys, extra, words):
    assert words in fails(capsys, "deploy", "--model-data", MODEL_DATA, *extra)
    assert not {"CreateModel", "CreateEndpointConfig"} & set(cloud.sent.operations())  # nothing left behind


def test_dry_run_shows_the_scaling_requests(cloud, capsys):
    calls = json.loads(deploy(capsys, "--autoscale", "1:4", "--dry-run"))
    assert [c["operation"] for c in calls][-3:] == ["CreateEndpoint", "RegisterScalableTarget", "PutScalingPolicy"]


@pytest.mark.parametrize("config, words", [
    ("  Model:\n    EnableNetworkIsolation: true\n",
     "do not support network isolation (SageMaker.Model.EnableNetworkIsolation in the SageMaker SDK's config file)"),
    ("  Model:\n    VpcConfig:\n      SecurityGroupIds: [sg-org]\n      Subnets: [subnet-org]\n",
     "do not support a VPC (--subnets/--security-groups, or SageMaker.Model.VpcConfig in the SageMaker SDK's config"),
])
def test_serverless_refuses_what_the_sdk_config_file_adds(cloud, capsys, monkeypatch, tmp_path, config, words):
    """An organisation's config file puts every Model in a VPC or in isolation: serverless cannot take either,
    and says where the setting comes from, before any Model is made."""
    path = tmp_path / "sagemaker-config.yaml"
    path.write_text("SchemaVersion: '1.0'\nSageMaker:\n" + config)
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(path))
    assert words in fails(capsys, "deploy", "--model-data", MODEL_DATA, "--serverless", 2048)
    assert not {"CreateModel", "CreateEndpointConfig"} & set(cloud.sent.operations())


@pytest.mark.parametrize("instance_type, words", [
    ("ml.p6-b200.48xlarge", "Blackwell"), ("ml.g7e.2xlarge", "Blackwell"), ("ml.p6e-gb200.36xlarge", "arm64"),
    ("ml.g5g.xlarge", "arm64"), ("ml.p2.xlarge", "Kepler"),
])
def test_gpu_types_the_image_cannot_serve_on_are_refused_before_any_model(cloud, capsys, instance_type, words):
    assert words in fails(capsys, "deploy", "--model-data", MODEL_DATA, "--instance-type", instance_type)
    assert "CreateModel" not in cloud.sent.operations()


def test_gpu_endpoint_gets_its_familys_ami(cloud, capsys):
    deploy(capsys, "--instance-type", "ml.p3.2xlarge")
    variant = cloud.sent.one("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-2-1"  # driver 535, listed for p3
