"""`launch.py transform` on SageMaker, against moto in server mode: the exact CreateTransformJob request."""
import json

import pytest

from launcher import transform
from aws_cloud import BUCKET, IMAGE, ROLE, cloud, fails, ok, state  # noqa: F401 - cloud is a fixture
from moto_server import moto_url  # noqa: F401 - a fixture


def put_pictures(cloud, prefix, names):
    s3 = cloud.boto.client("s3")
    for name in names:
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=b"picture")
    return f"s3://{BUCKET}/{prefix}/"


def test_transform_sends_one_picture_per_request_with_the_serving_caps(cloud, capsys):
    data = put_pictures(cloud, "photos", ["a/1.jpg", "a/2.JPEG", "b/3.jpg"])
    model_data = f"s3://{BUCKET}/jobs/j1/output/model.tar.gz"
    out = ok(capsys, "transform", "--data", data, "--model-data", model_data, "--job-name", "ic-batch-1")
    model = cloud.sent.one("CreateModel")
    assert model["ModelName"] == "ic-batch-1" and model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["PrimaryContainer"]["ModelDataUrl"] == model_data
    job = cloud.sent.one("CreateTransformJob")
    output = f"s3://{BUCKET}/image-classifier/transform/ic-batch-1"
    assert {key: job[key] for key in job if key != "Tags"} == {
        "TransformJobName": "ic-batch-1",
        "ModelName": "ic-batch-1",
        "MaxConcurrentTransforms": 8,  # ml.m5.xlarge: 4 vCPUs -> 4 workers -> 2 requests each
        "MaxPayloadInMB": 6,  # the model server's cap
        "BatchStrategy": "SingleRecord",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data}},
                           "ContentType": "image/jpeg", "SplitType": "None"},
        "TransformOutput": {"S3OutputPath": output, "Accept": "application/json"},
        "TransformResources": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge"},
    }
    assert {"Key": "image-classifier:model-data", "Value": model_data} in job["Tags"]
    assert "Transform job ic-batch-1 started" in out and "--summarize" in out
    assert state(cloud)["transform_job"] == "ic-batch-1"
    names = [j["TransformJobName"] for j in cloud.boto.client("sagemaker").list_transform_jobs()["TransformJobSummaries"]]
    assert names == ["ic-batch-1"]


def test_mixed_pictures_go_as_x_image_and_options_reach_the_request(cloud, capsys):
    data = put_pictures(cloud, "mixed", ["1.jpg", "2.png", "3.webp"])
    ok(capsys, "transform", "--data", data, "--model-data", f"s3://{BUCKET}/m.tar.gz", "--job-name", "ic-batch-2",
       "--instance-type", "ml.g4dn.xlarge", "--instance-count", 3, "--output", f"s3://{BUCKET}/out/")
    job = cloud.sent.one("CreateTransformJob")
    assert job["TransformInput"]["ContentType"] == "application/x-image"
    assert job["MaxConcurrentTransforms"] == 2  # one GPU -> one worker
    # A GPU type: the batch AMI whose driver (535) runs the image's CUDA 12 (the default, 470, cannot).
    assert job["TransformResources"] == {"InstanceCount": 3, "InstanceType": "ml.g4dn.xlarge",
                                         "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535"}
    assert job["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/out/"


def test_transform_refusals(cloud, capsys):
    data = put_pictures(cloud, "p", ["1.jpg"])
    assert "pass --max-concurrent" in fails(capsys, "transform", "--data", data, "--model-data", "s3://b/m.tar.gz",
                                            "--instance-type", "ml.x9.huge")
    assert "upload" in fails(capsys, "transform", "--data", "some/folder")
    assert "CreateTransformJob" not in cloud.sent.operations()


def test_transform_dry_run_shows_the_request(cloud, capsys):
    calls = json.loads(ok(capsys, "transform", "--data", "s3://b/photos/", "--model-data", "s3://b/m.tar.gz",
                          "--job-name", "t1", "--dry-run"))
    # The pictures are listed before the Model is made (no Model left behind for an empty folder).
    assert [c["operation"] for c in calls] == ["ListObjectsV2", "GetCallerIdentity", "DescribeImages", "CreateModel",
                                               "CreateTransformJob"]
    assert calls[-1]["params"]["TransformInput"]["SplitType"] == "None"


@pytest.mark.parametrize("keys, expected", [(["a.jpg", "b.JPG", "c.jpeg"], "image/jpeg"), (["a.png"], "image/png"),
                                            (["a.jpg", "b.png"], "application/x-image"), (["a.bmp"], "application/x-image")])
def test_job_content_type(keys, expected):
    assert transform.job_content_type(keys) == expected


def test_max_concurrent_is_capped_by_the_payload_product(cloud, capsys):
    data = put_pictures(cloud, "p", ["1.jpg"])
    line = fails(capsys, "transform", "--data", data, "--model-data", f"s3://{BUCKET}/m.tar.gz", "--max-concurrent", 17)
    assert "MaxConcurrentTransforms x MaxPayloadInMB up to 100 MB" in line and "at most 16 per instance" in line
    assert not {"CreateModel", "CreateTransformJob"} & set(cloud.sent.operations())
    ok(capsys, "transform", "--data", data, "--model-data", f"s3://{BUCKET}/m.tar.gz", "--max-concurrent", 16,
       "--job-name", "ic-batch-16")
    assert cloud.sent.one("CreateTransformJob")["MaxConcurrentTransforms"] == 16


@pytest.mark.parametrize("instance_type, volume_key", [("ml.m5.xlarge", True), ("ml.g5.xlarge", False)])
def test_kms_key_reaches_the_volume_only_without_local_storage(cloud, capsys, instance_type, volume_key):
    data = put_pictures(cloud, "p", ["1.jpg"])
    ok(capsys, "transform", "--data", data, "--model-data", f"s3://{BUCKET}/m.tar.gz", "--kms-key", "key-1",
       "--instance-type", instance_type, "--job-name", "ic-batch-kms")
    job = cloud.sent.one("CreateTransformJob")
    assert job["TransformOutput"]["KmsKeyId"] == "key-1"  # outputs: always
    assert ("VolumeKmsKeyId" in job["TransformResources"]) is volume_key
    assert job["TransformResources"].get("TransformAmiVersion") == (None if volume_key else "al2-ami-sagemaker-batch-gpu-535")
