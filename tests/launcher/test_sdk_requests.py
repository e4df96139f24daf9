"""The same requests on SDK v2 and v3: every command's requests, against the moto server and as --dry-run, recorded
under the SDK installed here and under the other one (the other virtual environment's python, in a subprocess),
equal field by field except the differences launcher/sdk_differences.py lists with their reasons.

Run by `make test` (.venv, v2) and `make test-sdk3` (.venv-sdk3, v3): each compares with the other environment
when it exists (CI builds .venv first, then .venv-sdk3, so `make test-sdk3` always compares).
"""
import json
import os
import re
import subprocess
import sys

import pytest

from aws_cloud import BUCKET, best_job_values, endpoint_answers, ok, playing
from aws_cloud import cloud, uploaded  # noqa: F401 - fixtures
from moto_server import moto_url  # noqa: F401 - a fixture (the cloud fixture uses it)
from conftest import PROJECT_DIR
from launcher import sdk_differences
from launcher.sdk import SDK_MAJOR

RECORD_ENV = "IMAGE_CLASSIFIER_RECORD_REQUESTS"  # where the other environment writes its requests
OTHER_PYTHON = PROJECT_DIR / (".venv-sdk3" if SDK_MAJOR < 3 else ".venv") / "bin" / "python"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier:latest"
MODEL_DATA = f"s3://{BUCKET}/jobs/j1/output/model.tar.gz"
VPC = ["--subnets", "subnet-1", "--security-groups", "sg-1", "--kms-key", "key-1"]

# Every command that talks to SageMaker, in the modes that change its requests (names fixed, so they compare).
COMMANDS = [
    ["tune", "--no-wait", "--job-name", "ic-tune-all", "--instance-type", "ml.m5.xlarge", "--instance-count", 2, *VPC],
    ["tune", "--no-wait", "--job-name", "ic-tune-iso", "--network-isolation", "--warm-start", "ic-tune-all"],
    ["tune", "--job-name", "ic-tune-all", "--attach", "ic-tune-all"],
    ["train", "--no-wait", "--job-name", "ic-train-all", "--instance-type", "ml.m5.xlarge", *VPC],
    ["train", "--no-wait", "--job-name", "ic-train-nodebug", "--no-debugger", "--network-isolation"],
    ["train", "--no-wait", "--job-name", "ic-train-rules", "--builtin-rules"],
    ["train", "--no-wait", "--job-name", "ic-train-best", "--from-tuning", "ic-tune-all", "--allow-interim"],
    ["train", "--attach", "ic-train-all"],
    ["deploy", "--model-data", MODEL_DATA, "--endpoint", "ep-plain", "--data-capture", 20, *VPC],
    ["deploy", "--model-data", MODEL_DATA, "--endpoint", "ep-gpu", "--instance-type", "ml.g4dn.xlarge"],
    ["deploy", "--model-data", MODEL_DATA, "--endpoint", "ep-serverless", "--serverless", 2048],
    ["deploy", "--model-data", MODEL_DATA, "--endpoint", "ep-scale", "--autoscale", "1:3"],
    ["predict", "PICTURE", "--endpoint", "ep-plain"],
    ["transform", "--data", f"s3://{BUCKET}/image-classifier/data/dogImages/test/", "--model-data", MODEL_DATA,
     "--job-name", "ic-batch-all", "--instance-type", "ml.g4dn.xlarge", "--kms-key", "key-1"],
    ["delete", "--endpoint", "ep-scale"],
    ["delete", "--endpoint", "ep-serverless"],
    ["delete", "--all", "--yes"],
]
DRY_RUNS = [argv + ["--dry-run", "--image-uri", IMAGE] for argv in COMMANDS
            if argv[0] not in ("report",) and "--attach" not in argv and "--all" not in argv]


def _stable(value):
    """A request's value without what differs between two runs on one SDK alike: object addresses, and the bytes of
    the pictures and their checksums (each run makes its own pictures; the SDKs pass them on as given)."""
    if isinstance(value, dict):
        return {k: f"<{k}>" if k in ("Body", "ContentMD5") else _stable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    if isinstance(value, str):
        return re.sub(r" at 0x[0-9a-f]+>", ">", value)
    return value


def record(cloud, capsys, data):
    """{command: [(operation, params)]}: what each command sent to moto, then what its --dry-run printed."""
    picture = next(p for p in sorted(data.rglob("*.JPG")))
    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", endpoint_answers({"predictions": [[]]})))
    playing(cloud, "DescribeHyperParameterTuningJob", best_job_values)
    # `upload` (the fixture's) sends its files in parallel, in no set order, through boto3 alone
    calls = {"upload": sorted(([o, _stable(p)] for o, p in cloud.sent.calls), key=json.dumps)}
    for command in COMMANDS:
        before = len(cloud.sent.calls)
        ok(capsys, *[picture if a == "PICTURE" else a for a in command])
        calls[" ".join(map(str, command))] = [(o, _stable(p)) for o, p in cloud.sent.calls[before:]]
    for command in DRY_RUNS:
        printed = json.loads(ok(capsys, *[picture if a == "PICTURE" else a for a in command]))
        calls["dry run " + " ".join(map(str, command))] = [(c["operation"], _stable(c["params"])) for c in printed]
    return calls


def test_every_commands_requests_are_recorded(cloud, capsys, uploaded):
    """This SDK's requests (written where the other environment's test asks for them)."""
    if not os.environ.get(RECORD_ENV) and OTHER_PYTHON.exists():
        pytest.skip("test_both_sdks_send_the_same_requests records them here too")
    calls = record(cloud, capsys, uploaded)
    creates = {o for requests in calls.values() for o, _ in requests if o.startswith("Create")}
    assert creates == {"CreateHyperParameterTuningJob", "CreateTrainingJob", "CreateModel", "CreateEndpointConfig",
                       "CreateEndpoint", "CreateTransformJob"}
    if os.environ.get(RECORD_ENV):
        with open(os.environ[RECORD_ENV], "w") as out:
            json.dump({"sdk": SDK_MAJOR, "calls": calls}, out)


@pytest.mark.skipif(not OTHER_PYTHON.exists(), reason=f"no {OTHER_PYTHON.parent.parent.name} to compare with "
                    f"(make {'test-sdk3' if SDK_MAJOR < 3 else 'setup'} creates it)")
def test_both_sdks_send_the_same_requests(cloud, capsys, uploaded, tmp_path):
    recorded = tmp_path / "other-sdk.json"
    environment = {**os.environ, RECORD_ENV: str(recorded),
                   "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR / "container_src"), str(PROJECT_DIR)])}
    for name in ("AWS_ENDPOINT_URL", "SAGEMAKER_ROLE_ARN", "SAGEMAKER_BUCKET", "IMAGE_CLASSIFIER_STATE"):
        environment.pop(name, None)  # the other run's cloud fixture sets its own
    run = subprocess.run([str(OTHER_PYTHON), "-m", "pytest", "-q", "-p", "no:randomly",
                          f"{__file__}::test_every_commands_requests_are_recorded"],
                         cwd=PROJECT_DIR, env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    other = json.loads(recorded.read_text())
    assert other["sdk"] != SDK_MAJOR
    here = record(cloud, capsys, uploaded)
    v2, v3 = (here, other["calls"]) if SDK_MAJOR < 3 else (other["calls"], here)
    assert list(v2) == list(v3)
    found = {command: sdk_differences.unexplained_in(v2[command], [tuple(c) for c in v3[command]])
             for command in v2}
    assert {command: d for command, d in found.items() if d} == {}, sys.stderr.write(json.dumps(found, indent=1))


def test_the_comparison_finds_a_field_sent_differently():
    """One field changed, one added, one left out (an empty one the table does not name), one list reordered
    where order counts: each is found."""
    v2 = [("CreateModel", {"ModelName": "m", "PrimaryContainer": {"Image": "i", "Environment": {}}}),
          ("CreateTransformJob", {"Tags": [{"Key": "a"}, {"Key": "b"}]})]
    assert sdk_differences.unexplained_in(v2, v2) == []
    changed = [("CreateModel", {"ModelName": "m", "PrimaryContainer": {"Image": "j"}, "EnableNetworkIsolation": True}),
               ("CreateTransformJob", {"Tags": [{"Key": "b"}, {"Key": "a"}]})]
    assert sorted(sdk_differences.unexplained_in(v2, changed)) == [
        "CreateModel.EnableNetworkIsolation: v3 only: True", "CreateModel.PrimaryContainer.Environment: v2 only: {}",
        "CreateModel.PrimaryContainer.Image: v2 'i', v3 'j'", "CreateTransformJob.Tags.0.Key: v2 'a', v3 'b'",
        "CreateTransformJob.Tags.1.Key: v2 'b', v3 'a'"]
    tuning = {"HyperParameterTuningJobConfig": {"ParameterRanges": {"IntegerParameterRanges": []}}}
    assert sdk_differences.unexplained_in([("CreateHyperParameterTuningJob", tuning)],
                                          [("CreateHyperParameterTuningJob", {"HyperParameterTuningJobConfig": {
                                              "ParameterRanges": {}}})]) == []  # the table's row
