"""What SageMaker refuses (or runs into a failure) that the SDK v2 lets through, checked before any request,
and the request fields the SDK v2 cannot send. launch.py's recipes call these; request_checks.py
checks the requests themselves against botocore's service model.

Sources: AWS's API reference (CreateTrainingJob, CreateHyperParameterTuningJob, CreateTransformJob,
CreateEndpointConfig), the SageMaker documentation on GPU drivers and serverless endpoints, and the SDK
2.257.7 source (`sagemaker.utils.instance_supports_kms`).
"""
import re
import sys

from image_classifier.cuda_check import GPU_INFERENCE_AMI

from . import LauncherError

# ------------------------------------------------------------------------------------------ instance types
# The image is built for amd64 (x86-64) and its torch for CUDA 12.8 (driver >= 525, compute capability 7.0+).
GPU_INFERENCE_AMI_535 = "al2-ami-sagemaker-inference-gpu-2-1"  # driver 535, CUDA 12.2
BATCH_GPU_AMI = "al2-ami-sagemaker-batch-gpu-535"              # batch transform's default (470) is too old
# GPU families the image runs on, and the endpoint AMI (InferenceAmiVersion) for each: the default drivers of
# ml.g4dn/g5/p4d (470, CUDA 11.4) cannot run a CUDA 12 build. ml.p3 is listed for the 535 AMIs.
INFERENCE_AMI_BY_FAMILY = {
    "g4dn": GPU_INFERENCE_AMI, "g5": GPU_INFERENCE_AMI, "g6": GPU_INFERENCE_AMI, "g6e": GPU_INFERENCE_AMI,
    "p4d": GPU_INFERENCE_AMI, "p4de": GPU_INFERENCE_AMI,
    "p5": GPU_INFERENCE_AMI, "p5e": GPU_INFERENCE_AMI, "p5en": GPU_INFERENCE_AMI,
    "p3": GPU_INFERENCE_AMI_535,
}
_BLACKWELL = ("a Blackwell GPU: it needs NVIDIA driver >= 570, newer than the AMIs this image is tried on "
              "(550 and 535); only al2023-ami-sagemaker-inference-gpu-4-1 (driver 580) has one")
# GPU families refused for serving and batch transform, with the reason.
UNSUPPORTED_GPU_FAMILIES = {
    "p6-b200": _BLACKWELL, "p6-b300": _BLACKWELL, "g7e": _BLACKWELL,
    "p2": "a Kepler GPU (K80): retired by SageMaker, and CUDA 12 builds of torch do not run on it",
    "g3": "a Maxwell GPU (M60): CUDA 12.8 builds of torch do not run on it",
}
_GRAVITON = re.compile(r"[a-z]+\d+g[a-z]*")   # c7g, m6gd, c6gn, g5g: AWS Graviton (arm64)
_GRACE = re.compile(r"[a-z]+\d+[a-z]*-gb\d+")  # p6e-gb200: NVIDIA Grace CPUs (arm64)


def family(instance_type):
    """`ml.g4dn.xlarge` -> `g4dn`; `ml.p6e-gb200.36xlarge` -> `p6e-gb200`."""
    parts = str(instance_type).split(".")
    if len(parts) != 3 or parts[0] != "ml":
        raise LauncherError(f"instance type {instance_type!r}: expected ml.FAMILY.SIZE, e.g. ml.m5.large")
    return parts[1]


def check_runs_the_image(instance_type):
    """The image is amd64: arm64 hosts (Graviton, Grace) cannot start it; retired types do not exist."""
    name = family(instance_type)
    if _GRAVITON.fullmatch(name) or _GRACE.fullmatch(name):
        raise LauncherError(f"{instance_type} has arm64 CPUs (AWS Graviton or NVIDIA Grace) and the image is built "
                            "for amd64 (x86-64): choose an x86 type (e.g. ml.m5, ml.c5, ml.g5)")
    if name == "p2":
        raise LauncherError(f"{instance_type}: {UNSUPPORTED_GPU_FAMILIES[name]}")


def is_gpu(instance_type):
    return bool(re.fullmatch(r"[gp]\d.*", family(instance_type)))


def _serving_gpu_family(instance_type, what, requested):
    """The family of a GPU type that serves the image; refuses the unsupported ones (unless `requested` names
    an AMI for a too-new one) and those missing from the table."""
    check_runs_the_image(instance_type)
    name = family(instance_type)
    if name in UNSUPPORTED_GPU_FAMILIES and not (requested and UNSUPPORTED_GPU_FAMILIES[name] is _BLACKWELL):
        hint = " (or choose an AMI yourself with --inference-ami)" if UNSUPPORTED_GPU_FAMILIES[name] is _BLACKWELL \
            and what == "endpoint" else ""
        raise LauncherError(f"{instance_type} is {UNSUPPORTED_GPU_FAMILIES[name]}: choose another GPU type for the "
                            f"{what}, e.g. ml.g5.xlarge{hint}")
    if name not in INFERENCE_AMI_BY_FAMILY and name not in UNSUPPORTED_GPU_FAMILIES:
        raise LauncherError(f"{instance_type}: the GPU family {name} is not in the launcher's driver table "
                            f"(launcher/api_rules.py), so no AMI is known to run the image's CUDA 12 build on it; "
                            f"known: {', '.join(sorted(INFERENCE_AMI_BY_FAMILY))}")
    return name


def inference_ami(instance_type, requested=None):
    """The endpoint's InferenceAmiVersion: by family for the GPU types (`requested` overrides it), none on CPU."""
    check_runs_the_image(instance_type)
    if not is_gpu(instance_type):
        if requested:
            raise LauncherError(f"--inference-ami applies to GPU instance types (ml.g*, ml.p*), not {instance_type}")
        return None
    name = _serving_gpu_family(instance_type, "endpoint", requested)
    return requested or INFERENCE_AMI_BY_FAMILY[name]


def transform_ami(instance_type):
    """CreateTransformJob's TransformResources.TransformAmiVersion: driver 535 on GPU types (their batch
    default, 470, cannot run a CUDA 12 build), none on CPU."""
    check_runs_the_image(instance_type)
    if not is_gpu(instance_type):
        return None
    _serving_gpu_family(instance_type, "transform job", None)
    return BATCH_GPU_AMI


# ------------------------------------------------------------------------------------------------- KMS
def volume_kms_key(instance_type, key):
    """`key` for the instances' storage volume, or None on types with local NVMe storage (SageMaker refuses a
    VolumeKmsKeyId there: "You can't request a VolumeKmsKeyId when using an instance type with local storage";
    the instance encrypts that storage itself). The SDK's own table decides."""
    from .sdk import instance_supports_kms

    if not key or instance_supports_kms(instance_type):
        return key
    print(f"note: {instance_type} has local NVMe storage, which the instance encrypts itself (SageMaker refuses a "
          "volume KMS key there): --kms-key encrypts the outputs only", file=sys.stderr)
    return None


# ------------------------------------------------------------------------------------------- serverless
def check_serverless(vpc, network_isolation, data_capture, sagemaker_session):
    """Serverless endpoints take no VPC, no network isolation and no data capture (AWS: "Feature exclusions");
    the endpoint would fail after its Model was made. Also what the SDK's config file would add to the Model
    (an organisation's defaults: SageMaker.Model.VpcConfig, SageMaker.Model.EnableNetworkIsolation)."""
    from .sdk import MODEL_ENABLE_NETWORK_ISOLATION_PATH, MODEL_VPC_CONFIG_PATH, get_sagemaker_config_value

    found = []
    if vpc or get_sagemaker_config_value(sagemaker_session, MODEL_VPC_CONFIG_PATH):
        found.append("a VPC (--subnets/--security-groups" + ("" if vpc else f", or {MODEL_VPC_CONFIG_PATH} in the "
                                                              "SageMaker SDK's config file") + ")")
    if network_isolation or get_sagemaker_config_value(sagemaker_session, MODEL_ENABLE_NETWORK_ISOLATION_PATH):
        found.append("network isolation (" + ("--network-isolation" if network_isolation else
                                              f"{MODEL_ENABLE_NETWORK_ISOLATION_PATH} in the SageMaker SDK's config file")
                     + ")")
    if data_capture is not None:
        found.append("data capture (--data-capture)")
    if found:
        raise LauncherError("serverless endpoints do not support " + ", ".join(found) +
                            ": deploy on instances (drop --serverless) or drop those settings")


# -------------------------------------------------------------------------------------------- transform
MAX_CONCURRENT_TIMES_PAYLOAD_MB = 100  # MaxConcurrentTransforms x MaxPayloadInMB may not exceed it


def max_concurrent_allowed(payload_mb):
    return MAX_CONCURRENT_TIMES_PAYLOAD_MB // payload_mb


def check_max_concurrent(max_concurrent, payload_mb):
    if max_concurrent < 1:
        raise LauncherError("--max-concurrent must be at least 1")
    if max_concurrent * payload_mb > MAX_CONCURRENT_TIMES_PAYLOAD_MB:
        raise LauncherError(f"--max-concurrent {max_concurrent}: SageMaker allows MaxConcurrentTransforms x "
                            f"MaxPayloadInMB up to {MAX_CONCURRENT_TIMES_PAYLOAD_MB} MB, and each request may carry "
                            f"{payload_mb} MB: at most {max_concurrent_allowed(payload_mb)} per instance")


# ------------------------------------------------------------------------------------------- warm start
PLATFORM_KEYS = ("_tuning_objective_metric",)  # added by the SDK to every tuning job alike


def check_warm_start_parent(parent, description, objective, hyperparameter_names):
    """AWS: a warm start's parents must have the new job's objective (type and metric) and as many static plus
    tunable hyperparameters; CreateHyperParameterTuningJob refuses it otherwise."""
    config = description.get("HyperParameterTuningJobConfig", {})
    theirs = config.get("HyperParameterTuningJobObjective", {})
    if (theirs.get("Type"), theirs.get("MetricName")) != (objective["Type"], objective["MetricName"]):
        raise LauncherError(f"--warm-start {parent}: it optimised {theirs.get('Type', '?')} "
                            f"{theirs.get('MetricName', '?')}, this job {objective['Type']} {objective['MetricName']};"
                            " a warm start needs the same objective (pass the parent's --objective)")
    definition = description.get("TrainingJobDefinition", {})
    ranges = config.get("ParameterRanges", {})
    names = set(definition.get("StaticHyperParameters", {})) | {
        r["Name"] for kind in ranges.values() for r in kind}
    names = {n for n in names if n not in PLATFORM_KEYS}
    ours = {n for n in hyperparameter_names if n not in PLATFORM_KEYS}
    if len(names) != len(ours):
        differ = sorted(names ^ ours)
        raise LauncherError(f"--warm-start {parent}: it had {len(names)} static plus tunable hyperparameters, this "
                            f"job has {len(ours)} (differing: {', '.join(differ)}); a warm start needs as many "
                            "(a parent from an older launcher: start a new tuning job without --warm-start)")


# ---------------------------------------------------------------------------- fields the SDK cannot send
def add_to_request(client, operation, **fields):
    """Merge `fields` (nested dicts) into every `operation` request that `client` sends: for API fields SDK v2
    has no parameter for. Registered first on `provide-client-params`, so the dry run's record, the tests'
    record and botocore's own validation all see the request as sent."""
    def merge(params, **_):
        _merge(params, fields)

    client.meta.events.register_first(f"provide-client-params.sagemaker.{operation}", merge,
                                      unique_id=f"add-to-{operation}")


def _merge(target, fields):
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
