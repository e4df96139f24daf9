"""What AWS and the SDK raise, as one-line `LauncherError`s that say what to do next."""
import contextlib
import re

from . import LauncherError

QUOTAS_CONSOLE = "https://console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas"

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
                                "the principal sagemaker.amazonaws.com (sts:AssumeRole); see docs/SAGEMAKER.md, Before you start")\
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

