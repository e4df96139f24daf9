"""The AWS side of the launcher: settings, sessions, the state file, dry runs and one-line errors.

launch.py configures the SageMaker objects (Estimator, HyperparameterTuner, Model); this module gives it
what they need and nothing it should read there: where the values come from (flag, environment, state),
a boto3/SageMaker session with the SDK's telemetry off, the dry-run recorder that answers every API call
itself (boto3's `before-call` event) so nothing is sent, the waits, and the translation of AWS
exceptions into `LauncherError` lines.
"""
import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from image_classifier.contract import atomic_write_text

from . import IMAGE_NAME, LOCAL_JOBS_DIR, LauncherError, api_rules, recorded_image_uri

# boto3, botocore and the SageMaker SDK are imported where they are used: slow imports (over a second for the
# SDK) that local commands and --help never need.

# Before the SDK is imported: it logs its config look-ups at INFO to stdout (where a dry run writes its JSON)
# unless its logger already has a level and a handler.
# The SDK's v2 lifecycle notice is shown, once per command (README, "The SageMaker SDK v2's lifecycle"): the
# SDK repeats it through logging and once more for each class used (Estimator, Model...); those repeats go.
# SAGEMAKER_SUPPRESS_V2_WARNING=1 silences the notice itself.
logging.getLogger("sagemaker.deprecations").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r"\S+ is part of the SageMaker Python SDK v2")
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
# Hyperparameters a tuning job adds to its trials, and those the launcher sets for trials only (`tune`
# turns Debugger tensors and rules off in trials): `train --from-tuning` takes neither.
PLATFORM_HYPERPARAMETER_PREFIXES = ("_tuning_objective_metric", "sagemaker_")
TRIAL_ONLY_HYPERPARAMETERS = {"debug-hook": "false", "rules": "false"}
# Laid over the SDK's own config files (/etc/xdg/sagemaker/config.yaml, the user's, or the files named by
# SAGEMAKER_ADMIN_CONFIG_OVERRIDE / SAGEMAKER_USER_CONFIG_OVERRIDE): telemetry off.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
QUOTAS_CONSOLE = "https://console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas"
POLL_SECONDS = 20.0                      # between status checks while waiting ($LAUNCHER_POLL_SECONDS overrides)

# Dry runs need no account: these stand in for values that would come from the user or from AWS.
DRY_RUN_ACCOUNT = "000000000000"
DRY_RUN_PLACEHOLDERS = {"region": "us-east-1", "role": f"arn:aws:iam::{DRY_RUN_ACCOUNT}:role/YOUR-SAGEMAKER-ROLE",
                        "bucket": "your-bucket"}

# setting -> (flag, environment variables in order, what it is)
SETTINGS = {
    "region": ("--region", ("AWS_REGION", "AWS_DEFAULT_REGION"), "AWS region"),
    "role": ("--role", ("SAGEMAKER_ROLE_ARN",), "IAM role SageMaker runs the jobs and endpoints with"),
    "bucket": ("--bucket", ("SAGEMAKER_BUCKET",), "S3 bucket for data, models, checkpoints and tensors"),
    "image_uri": ("--image-uri", ("IMAGE_URI",), "the image in ECR (default: .image-uri from build_and_push.sh)"),
}


def add_arguments(parser):
    """The AWS options every SageMaker subcommand takes."""
    group = parser.add_argument_group("AWS (SageMaker)")
    for name, (flag, envs, what) in SETTINGS.items():
        group.add_argument(flag, dest=name, help=f"{what} (env {' / '.join(envs)})")
    group.add_argument("--dry-run", action="store_true",
                       help="print the AWS API calls as JSON and send nothing (needs no credentials)")


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
    """The project tag plus one `image-classifier:<link>` tag per step this resource comes from."""
    return [PROJECT_TAG] + [{"Key": TAG_PREFIX + key.replace("_", "-"), "Value": str(value)}
                            for key, value in links.items() if value]


# -------------------------------------------------------------------------------------------- dry run
def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if hasattr(value, "read"):
        return f"<file {getattr(value, 'name', '?')}>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _fake_response(operation, params):
    """What AWS would answer, as far as the launcher and the SDK read it during a dry run."""
    if operation == "GetCallerIdentity":
        return {"Account": DRY_RUN_ACCOUNT, "Arn": f"arn:aws:iam::{DRY_RUN_ACCOUNT}:user/dry-run", "UserId": "DRYRUN"}
    if operation == "DescribeImages":
        return {"imageDetails": [{"imageTags": [i.get("imageTag") for i in params.get("imageIds", [])]}]}
    if operation == "ListObjectsV2":
        return {"Contents": [], "KeyCount": 0, "IsTruncated": False}
    if operation == "DescribeHyperParameterTuningJob":
        return {"HyperParameterTuningJobStatus": "Completed",
                "BestTrainingJob": {"TrainingJobName": "BEST-TRAINING-JOB-OF-" + params["HyperParameterTuningJobName"],
                                    "TunedHyperParameters": {}}}
    if operation == "DescribeTrainingJob":
        return {"TrainingJobStatus": "Completed", "ModelArtifacts": {
            "S3ModelArtifacts": f"s3://MODEL-DATA-OF-{params['TrainingJobName']}/model.tar.gz"}}
    if operation == "DescribeEndpoint":
        return {"EndpointStatus": "InService", "EndpointConfigName": params["EndpointName"]}
    if operation == "DescribeEndpointConfig":
        return {"ProductionVariants": [{"ModelName": params["EndpointConfigName"]}]}
    if operation == "InvokeEndpoint":
        from botocore.response import StreamingBody

        body = b'{"predictions": []}'
        return {"ContentType": "application/json", "Body": StreamingBody(io.BytesIO(body), len(body))}
    return {}


class DryRun:
    """Attached to a boto3 session: records every API call and answers it itself, so nothing is sent."""

    def __init__(self, boto_session):
        self.calls = []
        self._lock = threading.Lock()
        events = boto_session.events  # clients made from this session copy its handlers
        events.register("provide-client-params", self._record)
        events.register("before-call", self._answer)
        events.register("before-send", self._refuse)

    def _record(self, params, model, **_):
        with self._lock:
            self.calls.append({"service": model.service_model.service_name, "operation": model.name,
                               "params": _json_safe(params)})

    def _answer(self, model, **_):
        from botocore.awsrequest import AWSResponse

        params = self.calls[-1]["params"] if self.calls else {}
        return AWSResponse("https://dry-run.invalid", 200, {}, None), _fake_response(model.name, params)

    @staticmethod
    def _refuse(**_):  # a safety net: `before-call` answers first, so this never runs
        raise RuntimeError("dry run: an AWS request was about to be sent")

    def print(self):
        print(json.dumps(self.calls, indent=2))


# -------------------------------------------------------------------------------------------- session
_validated_config = None  # the config of this command's session, checked once against the schema


def sdk_config():
    """The SDK's config files (an organisation's defaults: VPC, KMS keys, tags...) with our settings laid over,
    checked against the SDK's schema once. The SDK re-checks its config on every look-up (20+ per job, about
    0.85 s each): `_validate_config_once` skips the re-check for this dict only."""
    global _validated_config
    from botocore.utils import merge_dicts
    from sagemaker.config import load_sagemaker_config

    try:
        config = load_sagemaker_config()  # validates each file it reads
    except Exception as error:  # noqa: BLE001 - jsonschema, yaml and file errors alike
        raise LauncherError(f"the SageMaker SDK's config file is not valid: {str(error).splitlines()[0]}") from None
    merge_dicts(config, json.loads(json.dumps(SDK_CONFIG)))
    _validated_config = config
    _validate_config_once()
    return config


def _validate_config_once():
    import sagemaker.utils

    validate = sagemaker.utils.validate_sagemaker_config
    if getattr(validate, "skips_our_config", False):
        return

    def validate_unless_ours(config=None):
        if config is None or config != _validated_config:
            validate(config)

    validate_unless_ours.skips_our_config = True
    sagemaker.utils.validate_sagemaker_config = validate_unless_ours


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
        """Fail now, before any AWS call, when a setting this command uses is missing."""
        for name in names:
            self.settings.require(name)

    def s3_uri(self, *parts):
        return "s3://" + "/".join([self.bucket, S3_PREFIX, *parts])

    @property
    def sagemaker(self):
        """The SDK session: role and bucket are passed explicitly where they are used (commands that do not
        use them do not ask for them), the SDK's config files apply, telemetry is off."""
        if self._sagemaker is None:
            import sagemaker

            self._sagemaker = sagemaker.Session(boto_session=self.boto, default_bucket=self.settings.bucket,
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

    # --- tuning jobs
    def winning_hyperparameters(self, tuning_job, allow_interim=False):
        """(best training job's name, its hyperparameters): the tuning job's static values and the best job's
        tuned ones, without the platform's own keys. A running tuning job's best is only the best so far."""
        description = self.client("sagemaker").describe_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=tuning_job)
        status = description.get("HyperParameterTuningJobStatus")
        best = description.get("BestTrainingJob")
        if not best:
            raise LauncherError(f"tuning job {tuning_job} has no best training job yet (status {status})")
        if status in ("InProgress", "Stopping") and not allow_interim:
            raise LauncherError(f"tuning job {tuning_job} is {status}: its best training job so far is an interim "
                                f"best; wait for it (python launch.py tune --attach {tuning_job}) or pass "
                                "--allow-interim")
        static = description.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {})
        values = {k: v for k, v in static.items() if k not in TRIAL_ONLY_HYPERPARAMETERS}
        best["TunedHyperParameters"] = {k: v.strip('"') for k, v in best.get("TunedHyperParameters", {}).items()
                                        if not k.startswith(PLATFORM_HYPERPARAMETER_PREFIXES)}
        values.update(best["TunedHyperParameters"])
        values = {k: v for k, v in values.items() if not k.startswith(PLATFORM_HYPERPARAMETER_PREFIXES)}
        return best, values

    def check_warm_start_parents(self, parents, image_uri, data_uri, objective, hyperparameter_names):
        """Refuses parents SageMaker would refuse (another objective, another number of hyperparameters); returns
        whether any ran another image or other data (then only TransferLearning applies)."""
        client = self.client("sagemaker")
        differs = False
        for parent in parents:
            description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=parent)
            if not self.dry_run:  # a dry run's answer is a placeholder
                api_rules.check_warm_start_parent(parent, description, objective, hyperparameter_names)
            definition = description.get("TrainingJobDefinition", {})
            image = definition.get("AlgorithmSpecification", {}).get("TrainingImage")
            data = {c.get("DataSource", {}).get("S3DataSource", {}).get("S3Uri", "").rstrip("/").rsplit("/", 1)[0]
                    for c in definition.get("InputDataConfig", [])}
            differs = differs or image != image_uri or bool(data - {data_uri.rstrip("/")})
        return differs

    # --- endpoints
    def project_resources(self):
        """[(kind, name)] of the endpoints, endpoint configs and models tagged project=image-classifier."""
        client = self.client("sagemaker")
        kinds = (("endpoint", "list_endpoints", "Endpoints", "EndpointName", "EndpointArn"),
                 ("endpoint config", "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName",
                  "EndpointConfigArn"),
                 ("model", "list_models", "Models", "ModelName", "ModelArn"))
        found = []
        for kind, operation, key, name_key, arn_key in kinds:
            for page in client.get_paginator(operation).paginate():
                for item in page.get(key, []):
                    tags = client.list_tags(ResourceArn=item[arn_key]).get("Tags", [])
                    if PROJECT_TAG in tags:
                        found.append((kind, item[name_key]))
        return found

    @contextlib.contextmanager
    def costs_until_deleted(self, endpoint):
        """From the CreateEndpoint request on, every way out (success, error, Ctrl-C) says that the endpoint
        costs money until it is deleted, and how."""
        created = []
        events = self.client("sagemaker").meta.events
        handler_id = f"costs-{endpoint}"
        events.register("before-call.sagemaker.CreateEndpoint", lambda **_: created.append(True), unique_id=handler_id)
        try:
            yield
        finally:
            events.unregister("before-call.sagemaker.CreateEndpoint", unique_id=handler_id)
            if created and not self.dry_run:
                print(f"Endpoint {endpoint} costs money until you delete it: python launch.py delete --endpoint "
                      f"{endpoint}", flush=True)

    def endpoint_is_live(self, name):
        client = self.client("sagemaker")
        try:
            status = client.describe_endpoint(EndpointName=name)["EndpointStatus"]
        except client.exceptions.ClientError as error:
            if "Could not find" in str(error):
                return False
            raise
        return status not in ("Deleting", "Failed")

    # --- waiting
    def poll_seconds(self):
        return float(os.environ.get("LAUNCHER_POLL_SECONDS") or POLL_SECONDS)

    def follow_training_job(self, name):
        """Stream the job's CloudWatch logs until it ends; a failure raises with its FailureReason."""
        from sagemaker.exceptions import UnexpectedStatusException

        with interrupted_while_waiting("training job", name, training_job_commands(name, self.region)):
            try:
                self.sagemaker.logs_for_job(name, wait=True, poll=self.poll_seconds(), log_type="All")
            except UnexpectedStatusException:
                pass  # described below, in one line
        description = self.client("sagemaker").describe_training_job(TrainingJobName=name)
        if description["TrainingJobStatus"] != "Completed":
            raise LauncherError(f"training job {name} {description['TrainingJobStatus'].lower()}: "
                                f"{description.get('FailureReason', 'no reason given')}")
        return description

    def wait_for_tuning_job(self, name):
        client = self.client("sagemaker")
        commands = (f"aws sagemaker describe-hyper-parameter-tuning-job --region {self.region} "
                    f"--hyper-parameter-tuning-job-name {name}",
                    f"aws sagemaker stop-hyper-parameter-tuning-job --region {self.region} "
                    f"--hyper-parameter-tuning-job-name {name}")
        last = None
        with interrupted_while_waiting("tuning job", name, commands):
            while True:
                description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
                status = description["HyperParameterTuningJobStatus"]
                counters = description.get("TrainingJobStatusCounters", {})
                line = f"{status}: " + ", ".join(f"{k} {v}" for k, v in counters.items() if v)
                if line != last:
                    print(f"  {name}: {line}", flush=True)
                    last = line
                if status in ("Completed", "Failed", "Stopped"):
                    break
                time.sleep(self.poll_seconds())
        if status != "Completed":
            raise LauncherError(f"tuning job {name} {status.lower()}: {description.get('FailureReason') or 'no reason given'}")
        return description

    def wait_for_endpoint(self, name):
        client = self.client("sagemaker")
        commands = (f"aws sagemaker describe-endpoint --region {self.region} --endpoint-name {name}",
                    f"python launch.py delete --endpoint {name}")
        with interrupted_while_waiting("endpoint", name, commands):
            while True:
                description = client.describe_endpoint(EndpointName=name)
                status = description["EndpointStatus"]
                if status not in ("Creating", "Updating", "SystemUpdating"):
                    break
                time.sleep(self.poll_seconds())
        if status != "InService":
            raise LauncherError(f"endpoint {name} is {status}: {description.get('FailureReason') or 'no reason given'}"
                                f" (remove it with: python launch.py delete --endpoint {name})")
        return description


def training_job_commands(name, region):
    return (f"aws logs tail /aws/sagemaker/TrainingJobs --region {region} --log-stream-name-prefix {name} --follow",
            f"aws sagemaker stop-training-job --region {region} --training-job-name {name}")


@contextlib.contextmanager
def interrupted_while_waiting(kind, name, commands):
    """Ctrl-C stops our waiting, not the job: say so, and how to follow or stop it."""
    follow, stop = commands
    try:
        yield
    except KeyboardInterrupt:
        raise LauncherError(f"stopped waiting; {kind} {name} keeps running. Follow it: {follow}  Stop it: {stop}") from None


# ------------------------------------------------------------------------------------------------ errors
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
_BAD_CREDENTIALS = {"InvalidClientTokenId", "UnrecognizedClientException", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch", "AuthFailure"}


class ErrorContext:
    """What the one-line error should add: `attach`, once a job exists, is the command that re-attaches to it
    (running the command again would start a second job)."""
    attach = None


@contextlib.contextmanager
def errors():
    """Turn what AWS and the SDK raise into one-line LauncherErrors."""
    import botocore.exceptions as bx

    context = ErrorContext()
    try:
        yield context
    except bx.NoCredentialsError:
        raise LauncherError("no AWS credentials found: run `aws configure` (or `aws sso login`), or set "
                            "AWS_PROFILE / AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; or try --dry-run") from None
    except (bx.TokenRetrievalError, bx.SSOTokenLoadError, bx.UnauthorizedSSOTokenError) as error:
        raise LauncherError(f"AWS credentials expired or unusable ({error}): log in again, e.g. `aws sso login`"
                            + _then(context)) from None
    except bx.ClientError as error:
        info = error.response.get("Error", {})
        code, message = info.get("Code", "?"), info.get("Message", str(error))
        operation = getattr(error, "operation_name", "?")
        if code in _EXPIRED:
            raise LauncherError("AWS credentials expired: refresh them (e.g. `aws sso login`, or new temporary keys)"
                                + _then(context)) from None
        if code in _BAD_CREDENTIALS:
            raise LauncherError(f"AWS rejected the credentials ({code}): check AWS_PROFILE / the access keys") from None
        if code == "ResourceLimitExceeded":
            quota = re.search(r"'([^']+)'", message)
            raise LauncherError(f"{operation}: the account's SageMaker quota "
                                f"{repr(quota.group(1)) if quota else '(see the message)'} is too low ({message}). "
                                f"Request an increase in the Service Quotas console ({QUOTAS_CONSOLE}) or choose "
                                "another --instance-type; spot and on-demand have separate quotas (--no-spot)") from None
        if code == "ValidationException" and re.search(r"assume (the )?role", message, re.IGNORECASE):
            raise LauncherError(f"SageMaker cannot assume the role ({message}): the role's trust policy must allow "
                                "the principal sagemaker.amazonaws.com (sts:AssumeRole); see README, Run on SageMaker")\
                from None
        if code in ("AccessDenied", "AccessDeniedException"):
            raise LauncherError(f"access denied for {operation}: {message}") from None
        raise LauncherError(f"{operation} failed: {code}: {message}") from None
    except bx.EndpointConnectionError as error:
        raise LauncherError(f"cannot reach AWS ({error}): check the network, --region and AWS_ENDPOINT_URL") from None
    except bx.ParamValidationError as error:
        raise LauncherError(f"invalid request: {error}") from None


def _then(context):
    if context.attach:
        return (f", then re-attach to the job: {context.attach} (running the command again would start a second "
                "job)")
    return ", and run the command again"
