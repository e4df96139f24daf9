"""The connection to AWS: settings, sessions, the state file, the image and bucket checks.

launch.py configures the SageMaker objects (Estimator, HyperparameterTuner, Model); this module gives it
what they need and nothing it should read there: where the values come from (flag, environment, state),
a boto3/SageMaker session with the SDK's telemetry off (and, with --dry-run, dry_run.DryRun answering every
call), and the checks that the image and the bucket are where the jobs will run. Beside it: waiting.py
(following jobs and endpoints) and aws_errors.py (AWS exceptions as one-line errors).
"""
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from image_classifier.contract import atomic_write_text

from . import IMAGE_NAME, LOCAL_JOBS_DIR, LauncherError, recorded_image_uri, request_checks
from .dry_run import DRY_RUN_PLACEHOLDERS, DryRun

# boto3, botocore and the SageMaker SDK are imported where they are used: slow imports (over a second for the
# SDK) that local commands and --help never need.

# Before the SDK is imported: it logs its config look-ups at INFO to stdout (where a dry run writes its JSON)
# unless its logger already has a level and a handler.
# The SDK's v2 lifecycle notice is shown once per machine, on one line (docs/SAGEMAKER.md, "The SageMaker SDK v2's lifecycle"): the
# SDK repeats it through logging and once more for each class used (Estimator, Model...); those repeats go.
# SAGEMAKER_SUPPRESS_V2_WARNING=1 silences the notice itself.
logging.getLogger("sagemaker.deprecations").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r"\S+ is part of the SageMaker Python SDK v2")
NOTICE_DIR_ENV = "IMAGE_CLASSIFIER_CACHE_DIR"  # where the "notice shown" marker goes (tests: a tmp folder)


def notice_marker():
    """The marker that says this machine's user has seen the SDK's lifecycle notice (under the user's cache)."""
    base = os.environ.get(NOTICE_DIR_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / IMAGE_NAME
    return Path(base) / "sdk-v2-notice-shown"


_show_warning = warnings.showwarning


def _sdk_notice_once_per_machine(message, category, filename, lineno, file=None, line=None):
    """The SDK's notice on one line, the first time on this machine; every other warning as Python shows it."""
    if category.__name__ != "SageMakerV2DeprecationWarning":
        return _show_warning(message, category, filename, lineno, file, line)
    marker = notice_marker()
    if marker.exists():
        return None
    print("note: " + " ".join(str(message).split()) + " (shown once on this machine)", file=sys.stderr)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only home: the notice shows again next time, nothing worse
        pass
    return None


warnings.showwarning = _sdk_notice_once_per_machine
_sdk_config_logger = logging.getLogger("sagemaker.config")
_sdk_config_logger.setLevel(logging.WARNING)
_sdk_config_logger.addHandler(logging.StreamHandler(sys.stderr))
# The tuner asks its estimator for a model it never trains and the SDK warns about that; nothing to act on.
logging.getLogger("sagemaker.estimator").setLevel(logging.ERROR)

S3_PREFIX = "image-classifier"           # everything the launcher writes to S3 goes under s3://BUCKET/S3_PREFIX/
STATE_FILE, STATE_FILE_ENV = LOCAL_JOBS_DIR / "sagemaker-state.json", "IMAGE_CLASSIFIER_STATE"  # the env var overrides
TAG_PREFIX = "image-classifier:"         # AWS tags that link the steps (e.g. image-classifier:training-job)
PROJECT_TAG = {"Key": "project", "Value": "image-classifier"}
# An ECR image URI (China regions end in .amazonaws.com.cn): account, region, repository, tag, digest.
ECR_IMAGE = re.compile(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)(?::([^@]+))?(?:@(.+))?")
# Laid over the SDK's own config files (/etc/xdg/sagemaker/config.yaml, the user's, or the files named by
# SAGEMAKER_ADMIN_CONFIG_OVERRIDE / SAGEMAKER_USER_CONFIG_OVERRIDE): telemetry off.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}

# setting -> (flag, environment variables in order, what it is)
SETTINGS = {
    "region": ("--region", ("AWS_REGION", "AWS_DEFAULT_REGION"), "AWS region"),
    "role": ("--role", ("SAGEMAKER_ROLE_ARN",), "IAM role SageMaker runs the jobs and endpoints with"),
    "bucket": ("--bucket", ("SAGEMAKER_BUCKET",), "S3 bucket for data, models, checkpoints and tensors"),
    "image_uri": ("--image-uri", ("IMAGE_URI",), "the image in ECR (default: .image-uri from build_and_push.sh)"),
}


def add_arguments(parser):
    """The AWS options every SageMaker subcommand takes (their group, returned)."""
    group = parser.add_argument_group("AWS (SageMaker)")
    for name, (flag, envs, what) in SETTINGS.items():
        group.add_argument(flag, dest=name, help=f"{what} (env {' / '.join(envs)})")
    group.add_argument("--dry-run", action="store_true",
                       help="print the AWS API calls as JSON and send nothing (needs no credentials)")
    return group


# ------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    region: str = None
    role: str = None
    bucket: str = None
    image_uri: str = None
    dry_run: bool = False

    @classmethod
    def from_args(cls, args):
        values = {}
        for name, (_, envs, _) in SETTINGS.items():
            value = getattr(args, name, None) or next((os.environ[e] for e in envs if os.environ.get(e)), None)
            values[name] = value
        return cls(**values, dry_run=bool(getattr(args, "dry_run", False)))

    def require(self, name):
        value = getattr(self, name)
        if value:
            return value
        if self.dry_run and name in DRY_RUN_PLACEHOLDERS:
            setattr(self, name, DRY_RUN_PLACEHOLDERS[name])
            return DRY_RUN_PLACEHOLDERS[name]
        flag, envs, what = SETTINGS[name]
        raise LauncherError(f"missing {what}: pass {flag} or set {' or '.join(envs)}")


# ---------------------------------------------------------------------------------------------- state
def state_file():
    return Path(os.environ.get(STATE_FILE_ENV) or STATE_FILE)


def load_state():
    path = state_file()
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        raise LauncherError(f"{path} is not valid JSON: fix or delete it (it only remembers names)") from None


def tags(**links):
    """The project tag plus one `image-classifier:<link>` tag per step this resource comes from. A value is
    made to fit TagValue (botocore's model: letters, digits, spaces and `_.:/=+-@`, 256 at most): an S3 URI
    may hold `(`, `,` or `#`, and SageMaker refuses the whole create request for one tag."""
    return [PROJECT_TAG] + [{"Key": TAG_PREFIX + key.replace("_", "-"),
                             "Value": request_checks.fit_to_pattern(value, "sagemaker", "TagValue")}
                            for key, value in links.items() if value]


# -------------------------------------------------------------------------------------------- session
_validated_config = None  # the config of this command's session, checked once against the schema


def sdk_config():
    """The SDK's config files (an organisation's defaults: VPC, KMS keys, tags...) with our settings laid over,
    checked against the SDK's schema once. The SDK re-checks its config on every look-up (20+ per job, about
    0.85 s each): `_validate_config_once` skips the re-check for this dict only."""
    global _validated_config
    from botocore.utils import merge_dicts

    from .sdk import load_sagemaker_config

    try:
        config = load_sagemaker_config()  # validates each file it reads
    except Exception as error:  # noqa: BLE001 - jsonschema, yaml and file errors alike
        raise LauncherError(f"the SageMaker SDK's config file is not valid: {str(error).splitlines()[0]}") from None
    merge_dicts(config, json.loads(json.dumps(SDK_CONFIG)))
    _validated_config = config
    _validate_config_once()
    return config


def _validate_config_once():
    from .sdk import config_validation

    validate = config_validation.validate_sagemaker_config
    if getattr(validate, "skips_our_config", False):
        return

    def validate_unless_ours(config=None):
        if config is None or config != _validated_config:
            validate(config)

    validate_unless_ours.skips_our_config = True
    config_validation.validate_sagemaker_config = validate_unless_ours


def new_boto_session(region, dry_run):
    """A boto3 session; dry runs get fake credentials, so none are looked up."""
    import boto3

    if dry_run:
        return boto3.Session(aws_access_key_id="dry-run", aws_secret_access_key="dry-run", region_name=region)
    return boto3.Session(region_name=region)


class Aws:
    """One subcommand's connection: settings, boto3 and SageMaker sessions, dry run, state."""

    def __init__(self, args):
        self.settings = Settings.from_args(args)
        self.dry_run = self.settings.dry_run
        region = self.settings.region
        self.boto = new_boto_session(region or (DRY_RUN_PLACEHOLDERS["region"] if self.dry_run else None),
                                     self.dry_run)
        self.region = self.boto.region_name
        if not self.region:
            raise LauncherError("missing AWS region: pass --region or set AWS_REGION or AWS_DEFAULT_REGION")
        # Every request is checked against botocore's model before it goes (or, in a dry run, is recorded).
        request_checks.refuse_invalid(self.boto)
        self.recorder = DryRun(self.boto) if self.dry_run else None
        self.state = load_state()
        self._sagemaker = None

    @property
    def role(self):
        return self.settings.require("role")

    @property
    def bucket(self):
        return self.settings.require("bucket")

    def require(self, *names):
        """Fail now, before any AWS call, when a setting this command uses is missing: all of them named at once."""
        problems = []
        for name in names:
            try:
                self.settings.require(name)
            except LauncherError as error:
                problems.append(str(error).removeprefix("missing "))
        if problems:
            raise LauncherError(f"missing {len(problems)} setting(s): " + "; ".join(problems))

    def s3_uri(self, *parts):
        return "s3://" + "/".join([self.bucket, S3_PREFIX, *parts])

    @property
    def sagemaker(self):
        """The SDK session: role and bucket are passed explicitly where they are used (commands that do not
        use them do not ask for them), the SDK's config files apply, telemetry is off."""
        if self._sagemaker is None:
            from .sdk import Session

            self._sagemaker = Session(boto_session=self.boto, default_bucket=self.settings.bucket,
                                                sagemaker_config=sdk_config())
        return self._sagemaker

    def client(self, service):
        return self.sagemaker.sagemaker_client if service == "sagemaker" else self.boto.client(service)

    # --- state: what each step made, so the next one finds it
    def remember(self, **values):
        if self.dry_run:
            return
        self.state.update({k: v for k, v in values.items() if v is not None})
        path = state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.state, indent=2) + "\n")

    def forget(self, *keys):
        for key in keys:
            self.state.pop(key, None)
        self.remember()

    def recall(self, key, explicit, how):
        """`explicit` if given, else what an earlier step recorded, else an error saying `how` to get one."""
        value = explicit or self.state.get(key)
        if not value:
            raise LauncherError(f"no {key.replace('_', ' ')} given or recorded in {state_file()}: {how}")
        return value

    def finish_dry_run(self):
        self.recorder.print()

    # --- the image
    def image_uri(self):
        """--image-uri / IMAGE_URI, else build_and_push.sh's .image-uri, else <account>.dkr.ecr...:latest;
        checked in ECR, so a job never starts on an image that is not there."""
        uri = self.settings.image_uri
        if not uri:
            uri = recorded_image_uri()
        if not uri:
            account = self.client("sts").get_caller_identity()["Account"]
            uri = f"{account}.dkr.ecr.{self.region}.amazonaws.com/{IMAGE_NAME}:latest"
        self._check_image(uri)
        return uri

    def _check_image(self, uri):
        match = ECR_IMAGE.fullmatch(uri)
        if not match:
            raise LauncherError(f"image {uri!r} is not an ECR image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME:TAG): "
                                "SageMaker pulls from ECR only; run ./build_and_push.sh (without --no-push) or pass "
                                "--image-uri")
        account, region, repository, tag, digest = match.groups()
        if region != self.region:
            raise LauncherError(f"image {uri} is in {region}, the jobs run in {self.region}: SageMaker pulls from its "
                                f"own region; push the image there (./build_and_push.sh --region {self.region}) or "
                                f"pass --region {region}")
        image_id = {"imageDigest": digest} if digest else {"imageTag": tag or "latest"}
        ecr = self.boto.client("ecr", region_name=region)
        try:
            ecr.describe_images(registryId=account, repositoryName=repository, imageIds=[image_id])
        except ecr.exceptions.RepositoryNotFoundException:
            raise LauncherError(f"image {uri} not found: ECR repository '{repository}' does not exist in "
                                f"{account}/{region} (run ./build_and_push.sh)") from None
        except ecr.exceptions.ImageNotFoundException:
            raise LauncherError(f"image {uri} not found in ECR (run ./build_and_push.sh, or pass --image-uri)") from None

    def check_bucket_region(self):
        """Jobs read and write S3 in their own region: a bucket elsewhere fails late (or costs transfer)."""
        if self.dry_run:
            return
        s3 = self.client("s3")
        try:
            location = s3.get_bucket_location(Bucket=self.bucket).get("LocationConstraint")
        except s3.exceptions.NoSuchBucket:
            raise LauncherError(f"bucket {self.bucket} does not exist: create it in {self.region} "
                                f"(aws s3 mb s3://{self.bucket} --region {self.region}) or pass --bucket") from None
        region = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)
        if region != self.region:
            raise LauncherError(f"bucket {self.bucket} is in {region}, the jobs run in {self.region}: use a bucket in "
                                f"{self.region} (--bucket) or pass --region {region}")


