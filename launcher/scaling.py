"""Endpoints for real traffic: Application Auto Scaling of an endpoint's variant, serverless and data-capture
settings. Used by launch.py's `deploy` and `delete`.

The default scaling target: SageMaker's metric SageMakerVariantInvocationsPerInstance counts requests per
instance per minute; AWS's guidance is a target of the measured peak per-instance throughput x 60 x a
safety factor of 0.5 (room for bursts while new instances start). The throughput is the serving
benchmark's, read from the one file that records it (CAPACITY_FILE: bench/bench_serving.py writes it on each
full run): pictures/s on the vCPUs of the default ml.m5.large at the default serving settings.
"""
import json
from pathlib import Path

from image_classifier.serving import settings as serving_settings

from . import LauncherError

SERVICE_NAMESPACE = "sagemaker"
VARIANT = "AllTraffic"  # the SDK's name for an endpoint's only production variant
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
# The serving benchmark's measured capacity: {"pictures_per_second", "vcpus", "date", "source", ...}.
CAPACITY_FILE = Path(__file__).resolve().parent.parent / "bench" / "serving_capacity.json"


def measured_capacity(path=CAPACITY_FILE):
    """The serving benchmark's last recorded figures (a dict); LauncherError when the file is missing or wrong."""
    try:
        capacity = json.loads(Path(path).read_text())
        if not float(capacity["pictures_per_second"]) > 0 or not int(capacity["vcpus"]) > 0:
            raise ValueError("pictures_per_second and vcpus must be positive")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise LauncherError(f"{path}: the serving benchmark's capacity cannot be read ({error}); run "
                            "bench/bench_serving.py to record it") from None
    return capacity


def capacity_drift(recorded, measured):
    """How far a new measurement is from the recorded one, as a fraction of the recorded (0.25 = 25 %)."""
    return abs(measured - recorded) / recorded


# A new measurement this far from the recorded one means the engine, the defaults or the machine changed: the
# benchmark still records it, and exits non-zero so that someone updates what quotes it (README, BENCHMARKS).
CAPACITY_DRIFT_LIMIT = 0.2
MEASURED_PICTURES_PER_SECOND = float(measured_capacity()["pictures_per_second"])  # per instance of the default type
SAFETY_FACTOR = 0.5
DEFAULT_TARGET_INVOCATIONS = round(MEASURED_PICTURES_PER_SECOND * 60 * SAFETY_FACTOR)  # per instance per minute
SCALE_OUT_COOLDOWN_SECONDS = 60    # add instances soon after a rise
SCALE_IN_COOLDOWN_SECONDS = 300    # remove them only after a calm spell (a new instance takes minutes)
# Serverless endpoints: memory in 1 GB steps from 1 to 6 GB; CPU only (no GPU can be chosen). The image
# serving ResNet-50 with one worker uses 1137 MiB (bench/bench_cold_start.py, docs/BENCHMARKS.md), more
# than SageMaker's smallest size: 2 GB is the least that holds it.
SERVERLESS_MEMORY_MB = tuple(range(1024, 6145, 1024))
SERVERLESS_MIN_MEMORY_MB = 2048
CAPTURE_PREFIX = "capture"  # s3://BUCKET/image-classifier/capture/


def parse_autoscale(text):
    """`MIN:MAX` -> (min, max) instances."""
    low, sep, high = str(text).partition(":")
    try:
        minimum, maximum = int(low), int(high)
    except ValueError:
        minimum = maximum = None
    if not sep or minimum is None or not 1 <= minimum <= maximum:
        raise LauncherError(f"--autoscale {text}: expected MIN:MAX instances with 1 <= MIN <= MAX, e.g. 1:4")
    return minimum, maximum


def check_serverless(memory_mb, instance_type, instance_count, autoscale):
    usable = [size for size in SERVERLESS_MEMORY_MB if size >= SERVERLESS_MIN_MEMORY_MB]
    if memory_mb not in usable:
        raise LauncherError(f"--serverless {memory_mb}: memory must be one of {', '.join(map(str, usable))} MB "
                            f"(SageMaker's sizes; below {SERVERLESS_MIN_MEMORY_MB} MB the model server does not fit: "
                            "it uses about 1.1 GiB)")
    if instance_type or instance_count or autoscale:
        raise LauncherError("--serverless endpoints have no instances: drop --instance-type, --instance-count "
                            "and --autoscale (serverless runs on CPU and scales by itself)")


def serverless_environment(memory_mb):
    """The container's environment for a serverless endpoint of `memory_mb`: its memory size, which `serve`
    sizes its workers and the Java heap by (one ResNet-50 worker holds about 1.2 GB; inside the endpoint the
    container may see more CPUs, or more memory, than the size it is billed and killed at). None without one."""
    if not memory_mb:
        return None
    return {serving_settings.MEMORY_ENV: str(memory_mb)}


def resource_id(endpoint):
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def policy_name(endpoint):
    return f"{endpoint}-invocations-per-instance"


def enable(client, endpoint, minimum, maximum, target):
    """Register the endpoint's variant as a scalable target and track invocations per instance."""
    common = {"ServiceNamespace": SERVICE_NAMESPACE, "ResourceId": resource_id(endpoint),
              "ScalableDimension": SCALABLE_DIMENSION}
    client.register_scalable_target(**common, MinCapacity=minimum, MaxCapacity=maximum)
    client.put_scaling_policy(
        PolicyName=policy_name(endpoint), PolicyType="TargetTrackingScaling", **common,
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(target),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleOutCooldown": SCALE_OUT_COOLDOWN_SECONDS,
            "ScaleInCooldown": SCALE_IN_COOLDOWN_SECONDS,
        })


def remove(client, endpoint):
    """Delete the endpoint variant's scaling policies and deregister it; returns the policy names removed
    (None when it was not a scalable target)."""
    common = {"ServiceNamespace": SERVICE_NAMESPACE, "ResourceId": resource_id(endpoint),
              "ScalableDimension": SCALABLE_DIMENSION}
    targets = client.describe_scalable_targets(ServiceNamespace=SERVICE_NAMESPACE, ResourceIds=[resource_id(endpoint)],
                                               ScalableDimension=SCALABLE_DIMENSION).get("ScalableTargets", [])
    if not targets:
        return None
    policies = [p["PolicyName"] for p in client.describe_scaling_policies(
        ServiceNamespace=SERVICE_NAMESPACE, ResourceId=resource_id(endpoint),
        ScalableDimension=SCALABLE_DIMENSION).get("ScalingPolicies", [])]
    for policy in policies:
        client.delete_scaling_policy(PolicyName=policy, **common)
    client.deregister_scalable_target(**common)
    return policies
