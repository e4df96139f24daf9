"""The `cloud` fixture and helpers for the launcher's tests against moto in server mode on 127.0.0.1 (a real AWS
API emulator, no account).

moto stores and returns the jobs, models and endpoints faithfully, but drops ProfilerConfig, overwrites
MetricDefinitions, completes jobs at once and fakes the best tuning job: so the tests assert on the requests
the launcher sends (recorded with boto3's `provide-client-params` event) and use the server for the
create / describe / delete flow. Where AWS would answer something moto cannot (a failed job, an expired
token), a boto3 event handler plays that answer. Every request of every test that uses the `cloud` fixture
is checked against botocore's service model as strictly as SageMaker checks it (launcher/request_checks.py,
the launcher's own check, here as a witness that runs after it): a test that sends a request SageMaker
would refuse fails.
"""
import io
import json

import pytest

import launch
from conftest import make_dataset
from moto_server import moto_url, reset  # noqa: F401 - moto_url is a fixture
from launcher import aws
from launcher.request_checks import RequestChecker

ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
BUCKET = "test-bucket"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/image-classifier:latest"


# ------------------------------------------------------------------------------------------ fixtures
class Sent:
    """The API calls the launcher makes, as it passes them to boto3 (before moto sees them)."""

    def __init__(self):
        self.calls = []
        self.actions = set()  # (IAM service prefix, operation): what the caller's credentials must allow
        self.handlers = []  # (event, handler) added to every session the launcher makes
        self.checker = RequestChecker()  # each request against botocore's service model

    def attach(self, boto_session, dry_run=False):
        """Last on each request, so a request the launcher itself refuses is neither checked nor recorded.
        A dry run's session (a user's --dry-run, or preflight.py's rehearsal) sends nothing: its requests are
        checked, not recorded, and get no played answers (the dry run answers them)."""
        self.checker.attach(boto_session)
        if dry_run:
            return
        boto_session.events.register_last(
            "provide-client-params",
            lambda params, model, **_: self.calls.append((model.name, json.loads(json.dumps(params, default=str)))))
        boto_session.events.register_last(
            "provide-client-params",
            lambda model, **_: self.actions.add((model.service_model.signing_name, model.name)))
        for event, handler in self.handlers:
            boto_session.events.register(event, handler)

    def operations(self):
        return [name for name, _ in self.calls]

    def one(self, operation):
        found = [params for name, params in self.calls if name == operation]
        assert len(found) == 1, (operation, self.operations())
        return found[0]


@pytest.fixture
def cloud(moto_url, tmp_path, monkeypatch):
    """A fresh emulated account: bucket, ECR repository with the image, launcher settings in the environment."""
    import boto3

    reset(moto_url)
    for name in ("IMAGE_URI", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("SAGEMAKER_BUCKET", BUCKET)
    monkeypatch.setenv("IMAGE_URI_FILE", str(tmp_path / "no-image-uri"))
    monkeypatch.setenv("IMAGE_CLASSIFIER_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("LAUNCHER_POLL_SECONDS", "0.01")
    from launcher.sdk import session_module

    # The SDK's log follower sleeps a fixed 5 s before its first look at a job; moto's jobs are done at once.
    wait_until = session_module._wait_until
    monkeypatch.setattr(session_module, "_wait_until", lambda fn, poll=5: wait_until(fn, poll=0.01))

    session = boto3.Session(region_name=REGION)
    session.client("s3").create_bucket(Bucket=BUCKET)
    session.client("ecr").create_repository(repositoryName="image-classifier")

    sent = Sent()
    make_session = aws.new_boto_session

    def recorded_session(region, dry_run):
        boto_session = make_session(region, dry_run)
        sent.attach(boto_session, dry_run)
        return boto_session

    monkeypatch.setattr(aws, "new_boto_session", recorded_session)
    cloud = type("Cloud", (), {"url": moto_url, "sent": sent, "boto": session, "tmp": tmp_path})
    push_image(cloud, "latest")
    yield cloud
    assert sent.checker.found == [], "requests SageMaker would refuse"


def push_image(cloud, tag):
    """An image in the emulated ECR repository (a manifest is all DescribeImages needs)."""
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                           "digest": "sha256:" + tag.encode().hex().ljust(64, "0")[:64]}, "layers": []}
    cloud.boto.client("ecr").put_image(repositoryName="image-classifier", imageManifest=json.dumps(manifest),
                                       imageTag=tag)


def run(capsys, *argv):
    """launch.py in-process: (exit code, stdout, stderr)."""
    code = launch.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def fails(capsys, *argv):
    """The command fails with exactly one line on stderr, no traceback; returns that line."""
    code, out, err = run(capsys, *argv)
    assert code == 1, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def state(cloud):
    return json.loads((cloud.tmp / "state.json").read_text())


def playing(cloud, operation, change):
    """Make the launcher see `change(parsed)` in the answers to `operation` (what moto cannot produce)."""
    cloud.sent.handlers.append((f"after-call.*.{operation}", lambda parsed, **_: change(parsed)))


@pytest.fixture
def uploaded(cloud, capsys):
    data = make_dataset(cloud.tmp / "dogImages", per_split={"train": 2, "valid": 1, "test": 1})
    ok(capsys, "upload", "--data", data)
    return data


def endpoint_answers(answer):
    """The endpoint's answer to InvokeEndpoint: moto's server cannot take a binary (JPEG) body."""
    from botocore.awsrequest import AWSResponse
    from botocore.response import StreamingBody

    def handler(**_):
        body = json.dumps(answer).encode()
        return AWSResponse("http://endpoint", 200, {}, None), {
            "ContentType": "application/json", "Body": StreamingBody(io.BytesIO(body), len(body))}

    return handler


def best_job_values(parsed):
    # moto's best training job has fake hyperparameters; these are what a tuning job returns (strings,
    # categorical values JSON-quoted by the SDK's framework estimators).
    parsed["BestTrainingJob"]["TrainingJobName"] = "ic-tune-best-001"
    parsed["BestTrainingJob"]["TunedHyperParameters"] = {"lr": "0.0123", "batch-size": '"128"'}
