"""The request rules SageMaker applies and the SDK v2 does not (launcher/api_rules.py), the request
checks (launcher/request_checks.py) on requests they must refuse, and the terminal's text filter."""
import copy

import boto3
import pytest
from botocore.stub import Stubber

from image_classifier.cuda_check import GPU_INFERENCE_AMI
from launcher import LauncherError, api_rules, terminal, transform
from launcher.request_checks import problems


# ------------------------------------------------------------------------------------------ inference AMIs
@pytest.mark.parametrize("instance_type, ami", [
    ("ml.g4dn.xlarge", GPU_INFERENCE_AMI), ("ml.g5.12xlarge", GPU_INFERENCE_AMI), ("ml.g6e.xlarge", GPU_INFERENCE_AMI),
    ("ml.p4d.24xlarge", GPU_INFERENCE_AMI), ("ml.p5en.48xlarge", GPU_INFERENCE_AMI),
    ("ml.p3.2xlarge", "al2-ami-sagemaker-inference-gpu-2-1"),
    ("ml.m5.large", None), ("ml.c5.xlarge", None), ("ml.m5d.large", None),
])
def test_inference_ami_by_family(instance_type, ami):
    assert api_rules.inference_ami(instance_type) == ami


@pytest.mark.parametrize("instance_type, words", [
    ("ml.p6-b200.48xlarge", "Blackwell"), ("ml.p6-b300.48xlarge", "Blackwell"), ("ml.g7e.2xlarge", "Blackwell"),
    ("ml.p6e-gb200.36xlarge", "arm64"), ("ml.g5g.xlarge", "arm64"), ("ml.c7g.large", "arm64"),
    ("ml.m6gd.large", "arm64"), ("ml.p2.xlarge", "Kepler"), ("ml.g9x.xlarge", "not in the launcher's driver table"),
])
def test_types_the_image_cannot_serve_on_are_refused_with_the_reason(instance_type, words):
    with pytest.raises(LauncherError, match=words):
        api_rules.inference_ami(instance_type)


def test_an_explicit_ami_opens_blackwell_but_never_arm64_or_cpu():
    newer = "al2023-ami-sagemaker-inference-gpu-4-1"
    assert api_rules.inference_ami("ml.p6-b200.48xlarge", newer) == newer
    assert api_rules.inference_ami("ml.g5.xlarge", "al2-ami-sagemaker-inference-gpu-2-1") == \
        "al2-ami-sagemaker-inference-gpu-2-1"
    with pytest.raises(LauncherError, match="arm64"):
        api_rules.inference_ami("ml.p6e-gb200.36xlarge", newer)
    with pytest.raises(LauncherError, match="applies to GPU instance types"):
        api_rules.inference_ami("ml.m5.large", GPU_INFERENCE_AMI)
    # only the too-new GPUs: an AMI cannot make CUDA 12 builds run on an old Maxwell (or Kepler)
    with pytest.raises(LauncherError, match="Maxwell"):
        api_rules.inference_ami("ml.g3.4xlarge", newer)
    with pytest.raises(LauncherError, match="Kepler"):
        api_rules.inference_ami("ml.p2.xlarge", newer)
    with pytest.raises(LauncherError, match="not in the launcher's driver table"):
        api_rules.inference_ami("ml.g9x.xlarge", newer)


@pytest.mark.parametrize("instance_type", ["m5.large", "xx.m5.large", "ml.m5.large.x", "ml.m5"])
def test_an_instance_type_is_ml_family_size(instance_type):
    with pytest.raises(LauncherError) as refused:
        api_rules.family(instance_type)
    assert str(refused.value) == f"instance type {instance_type!r}: expected ml.FAMILY.SIZE, e.g. ml.m5.large"


def test_refusals_name_the_type_the_use_and_the_way_out():
    with pytest.raises(LauncherError) as refused:
        api_rules.transform_ami("ml.g3.4xlarge")
    assert str(refused.value) == ("ml.g3.4xlarge is a Maxwell GPU (M60): CUDA 12.8 builds of torch do not run on it: "
                                  "choose another GPU type for the transform job, e.g. ml.g5.xlarge")
    with pytest.raises(LauncherError) as refused:
        api_rules.transform_ami("ml.p6-b200.48xlarge")  # batch transform takes no AMI of the user's
    assert str(refused.value).endswith("choose another GPU type for the transform job, e.g. ml.g5.xlarge")
    with pytest.raises(LauncherError) as refused:
        api_rules.inference_ami("ml.p6-b200.48xlarge")
    assert str(refused.value).endswith("choose another GPU type for the endpoint, e.g. ml.g5.xlarge (or choose an "
                                       "AMI yourself with --inference-ami)")
    with pytest.raises(LauncherError) as refused:
        api_rules.inference_ami("ml.g3.4xlarge")
    assert str(refused.value).endswith("for the endpoint, e.g. ml.g5.xlarge")
    with pytest.raises(LauncherError) as refused:
        api_rules.inference_ami("ml.m5.large", GPU_INFERENCE_AMI)
    assert str(refused.value) == "--inference-ami applies to GPU instance types (ml.g*, ml.p*), not ml.m5.large"
    with pytest.raises(LauncherError) as refused:
        api_rules.transform_ami("ml.g9x.xlarge")
    assert str(refused.value).startswith("ml.g9x.xlarge: the GPU family g9x is not in the launcher's driver table "
                                         "(launcher/api_rules.py), so no AMI is known to run the image's CUDA 12 "
                                         "build on it; known: g4dn, g5, g6, g6e, p3, p4d")
    with pytest.raises(LauncherError) as refused:
        api_rules.check_runs_the_image("ml.c7g.large")
    assert str(refused.value) == ("ml.c7g.large has arm64 CPUs (AWS Graviton or NVIDIA Grace) and the image is built "
                                  "for amd64 (x86-64): choose an x86 type (e.g. ml.m5, ml.c5, ml.g5)")
    assert api_rules.transform_ami("ml.g4dn.xlarge") == api_rules.BATCH_GPU_AMI  # the supported ones pass


def test_transform_ami_on_gpu_types_only():
    assert api_rules.transform_ami("ml.g4dn.xlarge") == api_rules.BATCH_GPU_AMI == "al2-ami-sagemaker-batch-gpu-535"
    assert api_rules.transform_ami("ml.p3.2xlarge") == api_rules.BATCH_GPU_AMI
    assert api_rules.transform_ami("ml.m5.xlarge") is None
    with pytest.raises(LauncherError, match="Blackwell"):
        api_rules.transform_ami("ml.g7e.2xlarge")
    with pytest.raises(LauncherError, match="arm64"):
        api_rules.transform_ami("ml.c7g.xlarge")


def test_training_refuses_arm64_and_retired_types_only():
    api_rules.check_runs_the_image("ml.p6-b200.48xlarge")  # training hosts bring their own drivers
    api_rules.check_runs_the_image("ml.g3s.xlarge")  # Maxwell: refused for serving, not here
    with pytest.raises(LauncherError, match="amd64"):
        api_rules.check_runs_the_image("ml.p6e-gb200.36xlarge")
    with pytest.raises(LauncherError) as refused:
        api_rules.check_runs_the_image("ml.p2.xlarge")
    assert str(refused.value) == f"ml.p2.xlarge: {api_rules.UNSUPPORTED_GPU_FAMILIES['p2']}"


# ----------------------------------------------------------------------------------------------------- KMS
@pytest.mark.parametrize("instance_type, sent", [
    ("ml.g4dn.xlarge", False), ("ml.g5.2xlarge", False), ("ml.p4d.24xlarge", False), ("ml.m5d.large", False),
    ("ml.p5.48xlarge", False), ("ml.m5.xlarge", True), ("ml.c5.2xlarge", True), ("ml.p3.2xlarge", True),
])
def test_volume_kms_key_only_without_local_nvme_storage(instance_type, sent, capsys):
    assert api_rules.volume_kms_key(instance_type, "key-1") == ("key-1" if sent else None)
    note = ("note: ml.g4dn.xlarge has local NVMe storage, which the instance encrypts itself (SageMaker refuses a "
            "volume KMS key there): --kms-key encrypts the outputs only\n")
    assert capsys.readouterr().err == ("" if sent else note.replace("ml.g4dn.xlarge", instance_type))
    assert api_rules.volume_kms_key(instance_type, None) is None


# ----------------------------------------------------------------------------------------------- transform
def test_max_concurrent_times_payload_stays_within_100_mb():
    payload = transform.MAX_PAYLOAD_MB
    api_rules.check_max_concurrent(100 // payload, payload)
    with pytest.raises(LauncherError, match=rf"at most {100 // payload} per instance"):
        api_rules.check_max_concurrent(100 // payload + 1, payload)
    # The default for a big instance is capped too (ml.m5.4xlarge: 8 workers x 2 requests = 16 <= 16).
    assert transform.max_concurrent_transforms("ml.m5.4xlarge") * payload <= 100


@pytest.mark.parametrize("max_concurrent, payload_mb", [(1, 100), (2, 50), (20, 5), (100, 1)])
def test_max_concurrent_up_to_exactly_100_mb_is_taken(max_concurrent, payload_mb):
    api_rules.check_max_concurrent(max_concurrent, payload_mb)
    with pytest.raises(LauncherError, match=rf"--max-concurrent {max_concurrent + 1}: .* at most {max_concurrent} per"):
        api_rules.check_max_concurrent(max_concurrent + 1, payload_mb)


@pytest.mark.parametrize("max_concurrent", [0, -1])
def test_max_concurrent_below_one_is_refused(max_concurrent):
    with pytest.raises(LauncherError) as refused:
        api_rules.check_max_concurrent(max_concurrent, 1)
    assert str(refused.value) == "--max-concurrent must be at least 1"


# ------------------------------------------------------------------------------- fields the SDK cannot send
TRANSFORM_REQUEST = {
    "TransformJobName": "job", "ModelName": "model",
    "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/in"}}},
    "TransformOutput": {"S3OutputPath": "s3://bucket/out"},
    "TransformResources": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1},
}
TRANSFORM_ARN = "arn:aws:sagemaker:us-east-1:123456789012:transform-job/job"


def sagemaker_client():
    """A real botocore client; Stubber answers its calls, so nothing leaves the machine."""
    return boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                 region_name="us-east-1").client("sagemaker")


def test_fields_the_sdk_cannot_send_are_merged_into_that_operations_requests_as_sent():
    client = sagemaker_client()
    api_rules.add_to_request(client, "CreateTransformJob", DataProcessing={"JoinSource": "Input"},
                             TransformResources={"TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535",
                                                 "InstanceCount": 2})
    merged = copy.deepcopy(TRANSFORM_REQUEST)
    merged["TransformResources"].update(TransformAmiVersion="al2-ami-sagemaker-batch-gpu-535", InstanceCount=2)
    merged["DataProcessing"] = {"JoinSource": "Input"}  # a new key; nested dicts merge, other values replace
    with Stubber(client) as stub:  # asserts the parameters after provide-client-params, as botocore validates them
        stub.add_response("create_transform_job", {"TransformJobArn": TRANSFORM_ARN}, merged)
        stub.add_response("stop_transform_job", {}, {"TransformJobName": "job"})  # other operations: as they are
        client.create_transform_job(**copy.deepcopy(TRANSFORM_REQUEST))
        client.stop_transform_job(TransformJobName="job")
        stub.assert_no_pending_responses()


def test_fields_added_twice_for_one_operation_merge_once(monkeypatch):
    merges = []
    monkeypatch.setattr(api_rules, "_merge", lambda target, fields: merges.append(dict(fields)))
    client = sagemaker_client()
    for _ in range(2):  # e.g. two transforms started from one process
        api_rules.add_to_request(client, "CreateTransformJob", DataProcessing={"JoinSource": "Input"})
    with Stubber(client) as stub:
        stub.add_response("create_transform_job", {"TransformJobArn": TRANSFORM_ARN}, TRANSFORM_REQUEST)
        client.create_transform_job(**copy.deepcopy(TRANSFORM_REQUEST))
    assert merges == [{"DataProcessing": {"JoinSource": "Input"}}]


# ---------------------------------------------------------------------------------------------- warm start
def parent(objective="best_valid_acc", kind="Maximize", static=("epochs", "sagemaker_torch_distributed_enabled")):
    return {"HyperParameterTuningJobConfig": {
                "HyperParameterTuningJobObjective": {"Type": kind, "MetricName": objective},
                "ParameterRanges": {"ContinuousParameterRanges": [{"Name": "lr"}],
                                    "CategoricalParameterRanges": [{"Name": "batch-size"}]}},
            "TrainingJobDefinition": {"StaticHyperParameters": {name: "1" for name in (*static,
                                                                                        "_tuning_objective_metric")}}}


def test_warm_start_parent_needs_the_same_objective_and_hyperparameter_count():
    ours = {"Type": "Maximize", "MetricName": "best_valid_acc"}
    names = {"epochs", "sagemaker_torch_distributed_enabled", "lr", "batch-size"}
    api_rules.check_warm_start_parent("p1", parent(), ours, names)
    with pytest.raises(LauncherError, match="Minimize best_valid_loss, this job Maximize best_valid_acc"):
        api_rules.check_warm_start_parent("p1", parent("best_valid_loss", "Minimize"), ours, names)
    with pytest.raises(LauncherError, match="differing: sagemaker_torch_distributed_enabled"):
        api_rules.check_warm_start_parent("p1", parent(static=("epochs",)), ours, names)


def test_warm_start_refusals_say_what_differs_exactly():
    ours = {"Type": "Maximize", "MetricName": "best_valid_acc"}
    names = {"epochs", "sagemaker_torch_distributed_enabled", "lr", "batch-size", "_tuning_objective_metric"}
    api_rules.check_warm_start_parent("p1", parent(), ours, names)  # the platform's own key counts on neither side
    with pytest.raises(LauncherError) as refused:
        api_rules.check_warm_start_parent("p1", parent("best_valid_acc", "Minimize"), ours, names)
    assert str(refused.value) == ("--warm-start p1: it optimised Minimize best_valid_acc, this job Maximize "
                                  "best_valid_acc; a warm start needs the same objective (pass the parent's "
                                  "--objective)")
    with pytest.raises(LauncherError) as refused:
        api_rules.check_warm_start_parent("p2", {}, ours, names)  # a parent without the fields: "?"
    assert str(refused.value).startswith("--warm-start p2: it optimised ? ?, this job Maximize best_valid_acc;")
    with pytest.raises(LauncherError) as refused:
        api_rules.check_warm_start_parent("p1", parent(static=("epochs", "seed", "workers")), ours, names)
    assert str(refused.value) == (
        "--warm-start p1: it had 5 static plus tunable hyperparameters, this job has 4 (differing: "
        "sagemaker_torch_distributed_enabled, seed, workers); a warm start needs as many (a parent from an older "
        "launcher: start a new tuning job without --warm-start)")
    no_ranges = parent()
    del no_ranges["HyperParameterTuningJobConfig"]["ParameterRanges"]
    with pytest.raises(LauncherError, match="it had 2 static plus tunable hyperparameters, this job has 4"):
        api_rules.check_warm_start_parent("p1", no_ranges, ours, names)
    no_static = parent()
    del no_static["TrainingJobDefinition"]
    with pytest.raises(LauncherError, match="it had 2 static plus tunable hyperparameters, this job has 4"):
        api_rules.check_warm_start_parent("p1", no_static, ours, names)


# ---------------------------------------------------------------------------------------------- serverless
def sdk_session(model=None):
    """What check_serverless reads of a SageMaker session: the SDK's config file (its Model defaults)."""
    import types

    return types.SimpleNamespace(sagemaker_config={"SchemaVersion": "1.0", "SageMaker": {"Model": model or {}}})


@pytest.mark.parametrize("vpc, isolation, capture, config, message", [
    ({"Subnets": ["s"]}, False, None, None, "a VPC (--subnets/--security-groups)"),
    (None, True, None, None, "network isolation (--network-isolation)"),
    (None, False, {"sampling": 10}, None, "data capture (--data-capture)"),
    (None, False, None, {"VpcConfig": {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}},
     "a VPC (--subnets/--security-groups, or SageMaker.Model.VpcConfig in the SageMaker SDK's config file)"),
    (None, False, None, {"EnableNetworkIsolation": True},
     "network isolation (SageMaker.Model.EnableNetworkIsolation in the SageMaker SDK's config file)"),
    ({"Subnets": ["s"]}, True, {}, None,
     "a VPC (--subnets/--security-groups), network isolation (--network-isolation), data capture (--data-capture)"),
], ids=["vpc", "isolation", "capture", "config-vpc", "config-isolation", "all"])
def test_serverless_refuses_what_serverless_endpoints_cannot_take(vpc, isolation, capture, config, message):
    with pytest.raises(LauncherError) as refused:
        api_rules.check_serverless(vpc, isolation, capture, sdk_session(config))
    assert str(refused.value) == (f"serverless endpoints do not support {message}: deploy on instances (drop "
                                  "--serverless) or drop those settings")


def test_serverless_takes_a_plain_model():
    api_rules.check_serverless(None, False, None, sdk_session())
    api_rules.check_serverless(None, False, None, None)  # no session: no config file


# ------------------------------------------------------------------------------------ the request validator
GOOD_TRANSFORM = {
    "TransformJobName": "t1", "ModelName": "m1",
    "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/p/"}}},
    "TransformOutput": {"S3OutputPath": "s3://b/out"},
    "TransformResources": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                           "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535"},
}


def test_the_validator_accepts_a_good_request():
    assert problems("sagemaker", "CreateTransformJob", GOOD_TRANSFORM) == []


def test_the_validator_finds_a_missing_required_field_and_a_bad_enum():
    request = {**GOOD_TRANSFORM, "TransformResources": {"InstanceType": "ml.g4dn.xlarge"},  # no InstanceCount
               "BatchStrategy": "OnePicture"}
    found = problems("sagemaker", "CreateTransformJob", request)
    assert "CreateTransformJob.TransformResources.InstanceCount: required, missing" in found
    assert any(p.startswith("CreateTransformJob.BatchStrategy: 'OnePicture' is not one of") for p in found)
    assert len(found) == 2


def test_the_validator_finds_ranges_lengths_patterns_and_unknown_members():
    variant = {"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.g5.xlarge",
               "InitialInstanceCount": 1, "InferenceAmiVersion": "al2-ami-sagemaker-inference-gpu-9",
               "ServerlessConfig": {"MemorySizeInMB": 512, "MaxConcurrency": 5}, "NoSuchField": 1}
    found = problems("sagemaker", "CreateEndpointConfig", {"EndpointConfigName": "bad name!" + "x" * 70,
                                                          "ProductionVariants": [variant]})
    text = "\n".join(found)
    assert "InferenceAmiVersion: 'al2-ami-sagemaker-inference-gpu-9' is not one of" in text
    assert "ServerlessConfig.MemorySizeInMB: 512 is outside 1024..6144" in text
    assert "ProductionVariants[0].NoSuchField: not a member" in text
    assert "EndpointConfigName: 79 characters" in text and "EndpointConfigName: 'bad name!" in text
    assert problems("sagemaker", "CreateTransformJob", {**GOOD_TRANSFORM, "MaxConcurrentTransforms": "4"}) == [
        "CreateTransformJob.MaxConcurrentTransforms: expected integer, got '4'"]


# -------------------------------------------------------------------------------------------- the terminal
@pytest.mark.parametrize("raw, shown", [
    ("Red fox", "Red fox"),
    ("\x1b[31mRed\x1b[0m fox", "Red fox"),                # colour
    ("a\x1b]0;pwned\x07b", "ab"),                         # window title (OSC)
    ("line\nforged=0.999\r", "lineforged=0.999"),         # a forged second line
    ("tab\there\x7f\x9b2J", "tabhere"),                   # DEL, C1 CSI
    ("Épagneul breton", "Épagneul breton"),               # letters stay
])
def test_printable_strips_escapes_and_control_characters(raw, shown):
    assert terminal.printable(raw) == shown
