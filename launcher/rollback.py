"""A command's resources made together or not at all: `all_or_nothing(connection)` removes what the block
made when a later step of it fails.

`transform` makes a Model, then the transform job; `deploy` a Model, an endpoint config, then the endpoint.
When a later request is refused (a quota, a name taken, a request that failed request_checks), or Ctrl-C
comes, between them, what the block made so far is deleted, newest first, and the error goes on. What is
made is read from the requests themselves (botocore's `after-call` of each create that succeeded), so the
SDK's own calls count. Past the block (waiting for an endpoint, its autoscaling) what was made is the
user's: deploy says how to delete it.
"""
import contextlib
import sys

# The creates a block may make -> (the client method that removes it, the request member naming it).
UNDO = {
    "CreateModel": ("delete_model", "ModelName"),
    "CreateEndpointConfig": ("delete_endpoint_config", "EndpointConfigName"),
    "CreateEndpoint": ("delete_endpoint", "EndpointName"),
}
_NAME_KEY = "rollback-name"  # where a create's name waits in botocore's request context for its answer


@contextlib.contextmanager
def all_or_nothing(connection):
    if connection.dry_run:  # nothing is made
        yield
        return
    client = connection.client("sagemaker")
    made = []

    def note_name(params, context, model, **_):
        context[_NAME_KEY] = params.get(UNDO[model.name][1])

    def note_made(http_response, context, model, **_):
        if http_response.status_code < 300:
            made.append((model.name, context.get(_NAME_KEY)))

    handlers = [(f"{event}.sagemaker.{operation}", handler) for operation in UNDO
                for event, handler in (("provide-client-params", note_name), ("after-call", note_made))]
    for event, handler in handlers:
        client.meta.events.register(event, handler, unique_id=f"rollback-{event}")  # botocore: ids are global
    try:
        yield
    except BaseException:
        undo(client, made)
        raise
    finally:
        for event, handler in handlers:
            client.meta.events.unregister(event, handler, unique_id=f"rollback-{event}")


def undo(client, made):
    """Delete what was `made`, newest first; what cannot be deleted is named, with the command that does it."""
    for operation, name in reversed(made):
        method, member = UNDO[operation]
        kind = operation[len("Create"):]
        try:
            getattr(client, method)(**{member: name})
            print(f"Removed {kind} {name}, which this command made before it failed.", file=sys.stderr)
        except Exception as error:  # noqa: BLE001 - the original error goes on; this one is reported
            print(f"warning: could not remove {kind} {name} ({error}): remove it with `aws sagemaker "
                  f"{method.replace('_', '-')} --{member_flag(member)} {name}`", file=sys.stderr)


def member_flag(member):
    """`EndpointConfigName` -> `endpoint-config-name` (the AWS CLI's option)."""
    return "".join("-" + c.lower() if c.isupper() else c for c in member).lstrip("-")
