"""Nothing is sent unless every request of the command would be accepted: the command first runs as a dry
run, then for real.

`dry_run_first(recipe)` wraps a SageMaker recipe of launch.py. Before the real run, the recipe runs once
with `--dry-run` set: every AWS call is recorded and answered locally (dry_run.py), and each request is
checked against botocore's service model as it is made (request_checks.refuse_invalid, attached to every
session the launcher makes). A request SageMaker would refuse, or any other error the recipe raises before
its first request, stops the command there, with nothing sent.

Why a rehearsal and not a list of checks: the dry run produces the requests the real run sends, by the same
code (the SDK's own request building included), so no second description of them can drift. What it is
checked against, in the code:
- Side effects: none. The dry run sends nothing (S3 uploads of local weights are recorded, not made), writes
  no state (`Aws.remember` does nothing in a dry run) and waits for nothing. What it prints (the JSON of its
  calls, notes on stderr) is captured, and shown only when the rehearsal fails: a real run prints it again.
  The SDK is imported before the capture, so its once-per-process v2 notice reaches the terminal.
- Answers: where a request depends on an answer from AWS (a training job's model.tar.gz, the pictures'
  content type, a tuning job's best values) the rehearsal's requests carry the dry run's stand-ins, of the
  same shape. So the real run checks every request again before sending it, and a command that makes
  several resources removes what it made when a later request fails (rollback.py).
- Missing settings: a dry run fills in placeholders for role and bucket; the real run then stops at the
  missing setting, before its first create.
A user's `--dry-run` is its own rehearsal (its requests are checked as they are recorded), and `--attach`
makes nothing: neither is rehearsed.
"""
import argparse
import contextlib
import functools
import io
import sys


def dry_run_first(recipe):
    @functools.wraps(recipe)
    def run(args):
        if not getattr(args, "dry_run", False) and not getattr(args, "attach", None):
            rehearse(recipe, args)
        return recipe(args)

    return run


def rehearse(recipe, args):
    """Run `recipe` as a dry run of `args`, quietly; whatever it raises is raised here."""
    from . import sdk  # noqa: F401 - imported now, so the SDK's one-time notice is not captured below

    rehearsal = argparse.Namespace(**{**vars(args), "dry_run": True})
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            recipe(rehearsal)
    except BaseException:
        sys.stderr.write(err.getvalue())  # the notes that led up to the error
        raise
