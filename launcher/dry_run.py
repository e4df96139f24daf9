"""--dry-run: every AWS call recorded and answered here, nothing sent.

`DryRun` is attached to the command's boto3 session (its `before-call` event answers each call with what AWS
would say, as far as the launcher and the SDK read it), so a dry run needs no account and no network, and
prints the exact requests a real run would send.
"""
import io
import json
import threading

# Dry runs need no account: these stand in for values that would come from the user or from AWS.
DRY_RUN_ACCOUNT = "000000000000"
DRY_RUN_PLACEHOLDERS = {"region": "us-east-1", "role": f"arn:aws:iam::{DRY_RUN_ACCOUNT}:role/YOUR-SAGEMAKER-ROLE",
                        "bucket": "your-bucket"}


def json_safe(value):
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if hasattr(value, "read"):
        return f"<file {getattr(value, 'name', '?')}>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def placeholder(shape, name="", depth=0):
    """A value of botocore's `shape` holding its required members only, each a placeholder (the SDK v3 reads back
    what it creates into models that require them). Names echo the request's where the member is named alike."""
    import datetime

    kind = shape.type_name
    if kind == "structure":
        return {member: placeholder(shape.members[member], member, depth + 1)
                for member in shape.required_members if depth < 8}
    if kind in ("list", "map"):
        return [] if kind == "list" else {}
    if kind == "timestamp":
        return datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    if kind in ("integer", "long", "float", "double"):
        return 0
    if kind == "boolean":
        return False
    if kind == "blob":
        return b""
    enum = shape.enum if kind == "string" else None
    return enum[0] if enum else f"DRY-RUN-{name}"


def fake_response(operation, params, output_shape=None):
    """What AWS would answer, as far as the launcher and the SDK read it during a dry run: the answers below, with
    every required member of the response filled in (placeholders; names as the request's)."""
    answer = _known_answer(operation, params)
    if output_shape is None:
        return answer
    named = {k: v for k, v in params.items() if isinstance(v, str) and k.endswith("Name") and k in output_shape.members}
    return complete({**named, **answer}, output_shape)


def complete(value, shape):
    """`value` with the required members of `shape` (and of the structures inside it) that it lacks."""
    if shape.type_name == "structure" and isinstance(value, dict):
        filled = {**placeholder(shape), **value}
        return {k: complete(v, shape.members[k]) if k in shape.members else v for k, v in filled.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [complete(v, shape.member) for v in value]
    return value


def _known_answer(operation, params):
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
                               "params": json_safe(params)})

    def _answer(self, model, **_):
        from botocore.awsrequest import AWSResponse

        params = self.calls[-1]["params"] if self.calls else {}
        return AWSResponse("https://dry-run.invalid", 200, {}, None), fake_response(model.name, params,
                                                                                    model.output_shape)

    @staticmethod
    def _refuse(**_):  # a safety net: `before-call` answers first, so this never runs
        raise RuntimeError("dry run: an AWS request was about to be sent")

    def print(self):
        print(json.dumps(self.calls, indent=2))

