"""launch.py's command line: every command's options, their defaults and their help.

`build_parser()` only parses; launch.py maps `args.command` to its recipe. The defaults a recipe also
applies itself (an option left out) are defined here once and imported there.
"""
import argparse
from pathlib import Path

from image_classifier.contract import DEFAULT_TOP_K, SERVING_PORT

from image_classifier import __version__

from . import LOCAL_JOBS_DIR, SAMPLE_DIR, LauncherError, aws, presets
from .local import MODES
from .scaling import DEFAULT_TARGET_INVOCATIONS
from .transform import DEFAULT_PORT as TRANSFORM_PORT, TRANSFORM_INSTANCE

TRAINING_INSTANCE = "ml.g4dn.xlarge"  # one NVIDIA T4: the cheapest GPU instance
ENDPOINT_INSTANCE = "ml.m5.large"     # CPU: one picture through a ResNet-50 takes a fraction of a second
MAX_RUN_SECONDS = 3 * 3600            # a training job is stopped after this; spot jobs may wait as long again
LAST = "last"                         # `--from-tuning` without a name: the tuning job recorded by `tune`
TUNING_JOB_PREFIX = "ic-tune"         # tuning job names: 32 characters at most
LOCAL, SAGEMAKER = "local", "sagemaker"  # where a command runs


# Each command's one-line help (in `launch.py --help`) and its description (in `launch.py COMMAND --help`).
COMMAND_HELP = {
    "data": ("write the embedded sample dataset (digits) in the dogImages layout",
        "Write scikit-learn's 1,797 handwritten digits as PNG files in the "
        "dogImages layout (train/ valid/ test/, one folder per class)."),
    "upload": ("copy a dataset folder to S3 (what is new or changed)",
        "Copy a dataset folder (train/ valid/ test/, one sub-folder per class) "
        "to S3, skipping files already there with the same size and MD5."),
    "tune": ("hyperparameter tuning job on SageMaker (lr, batch-size)",
        "A SageMaker hyperparameter tuning job over lr (0.001-0.1, log scale) "
        "and batch-size (32-512); prints the best job and its values."),
    "train": ("run the training job (locally with --local)",
        "Run the training job. With --local it runs on this machine over "
        "an /opt/ml-shaped tree in local_jobs/<job-name>/."),
    "deploy": ("serve a model (locally with --local, or as a SageMaker endpoint)",
        "Serve a model. With --local it runs the model server on this "
        "machine and waits until the model answers."),
    "predict": ("send pictures to a served model, print the top-k labels",
        "Send each picture to the model and print its top-k labels."),
    "delete": ("stop a served model (local server, or SageMaker endpoint)",
        "Stop a served model: the local server with --local."),
    "transform": ("classify a folder of pictures as a batch transform job (locally with --local)",
        "Send every file under --data to the model, one request per picture as SageMaker's batch "
        "transform does, and write its answer to OUT/<file>.out; then a summary CSV. A refused "
        "picture does not stop the job (as on SageMaker): the others are answered, the refused ones "
        "listed, and the job exits 2; --stop-on-bad stops at the first."),
    "jobs": ("list the local training jobs (name, status, accuracy, size, date)",
        "List the local training jobs in local_jobs/: name, status, test accuracy, size on disk, date."),
    "clean": ("remove local training jobs (named, or older than an age)",
        "Remove local training jobs: those named, or those older than --older-than AGE, after one question "
        "(--yes: none)."),
    "report": ("write an HTML report of a finished training job",
        "One self-contained HTML page plus PNG figures: loss per step, "
        "accuracy per epoch, test confusion matrix, rules, profiler, "
        "hyperparameters."),
}


def positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 up, got {text!r}")
    return int(text)


def parse_hp(pairs):
    """`--hp KEY=VALUE` pairs into a dict (values stay strings, as SageMaker passes them)."""
    hps = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LauncherError(f"--hp expects KEY=VALUE, got {pair!r}")
        hps[key.strip()] = value.strip()
    return hps



def add_job_arguments(parser, sagemaker):
    """Options of training (and tuning) jobs: those of both places on `parser` (after its --local, if any),
    SageMaker's on `sagemaker` (the parser itself for a SageMaker-only command)."""
    parser.add_argument("--instance-count", type=positive_int, default=1, metavar="N",
                        help="instances (data-parallel on every GPU of each)"
                             + ("; with --local process: emulated hosts" if parser.where[LOCAL] else ""))
    parser.add_argument("--pretrained-weights", metavar="PATH|S3URI",
                        help="a .pth state_dict (file, folder or s3:// URI) sent as the `pretrained` channel: "
                             "ImageNet weights for offline or isolated jobs, or your own earlier model")
    sagemaker.add_argument("--instance-type", help=f"training instance (default {TRAINING_INSTANCE})")
    sagemaker.add_argument("--no-spot", action="store_true", help="on-demand instead of managed spot")
    sagemaker.add_argument("--max-run", type=int, default=MAX_RUN_SECONDS, metavar="SECONDS",
                           help=f"stop a job after this long (default {MAX_RUN_SECONDS})")
    sagemaker.add_argument("--no-wait", action="store_true", help="return once the job is created")
    add_network_arguments(sagemaker)


def add_network_arguments(group):
    """Options for locked-down accounts (also settable in the SageMaker SDK's config file)."""
    group.add_argument("--subnets", nargs="+", metavar="SUBNET", help="run in these VPC subnets")
    group.add_argument("--security-groups", nargs="+", metavar="SG", help="VPC security group ids")
    group.add_argument("--kms-key", metavar="KEY", help="KMS key for volumes and outputs")
    group.add_argument("--network-isolation", action="store_true", help="no network access from the container")


def add_command(commands, name):
    help_text, description = COMMAND_HELP[name]
    return commands.add_parser(name, help=help_text, description=description)


def add_preset(parser):
    parser.add_argument("--preset", choices=list(presets.PRESETS), metavar="NAME",
                        help="start from a named set of hyperparameters (--hp overrides any of them): "
                             + presets.describe())


def add_local_port(group):
    group.add_argument("--port", type=int, default=SERVING_PORT, help=f"local port (default {SERVING_PORT})")


# `--local` means one thing on every command: on this machine instead of SageMaker. Where the command starts
# something (a job, a model server), it may also say how: in the image (docker), as a process, or auto.
def local_options(parser, what, starts=False):
    """The group of options that apply with --local only (given without it, they are refused)."""
    group = parser.add_argument_group("on this machine (with --local)")
    if starts:
        group.add_argument("--local", nargs="?", const="auto", choices=MODES, metavar="HOW",
                           help=f"{what}; HOW: in the image (docker), as a plain process, or auto (the default)")
    else:
        group.add_argument("--local", action="store_true", help=what)
    parser.where[LOCAL].append(group)
    return group


def sagemaker_options(parser):
    """The groups of options that apply on SageMaker only (given with --local, they are refused): the
    command's own, and the AWS settings."""
    group = parser.add_argument_group("on SageMaker (without --local)")
    parser.where[SAGEMAKER] += [group, aws.add_arguments(parser)]
    return group


def misplaced_options(parser, args):
    """The options given that do not apply where the command runs (with or without --local)."""
    here = LOCAL if getattr(args, "local", None) else SAGEMAKER
    return [action.option_strings[0] for place, groups in parser.where.items() if place != here
            for group in groups for action in group._group_actions
            if action.dest != "local" and getattr(args, action.dest, None) != action.default]


def add_model_source(parser, local_help, verb):
    """A command that serves a model (deploy, transform): --local with --model, or SageMaker's --job or
    --model-data. Returns (the local group, the SageMaker group)."""
    here = local_options(parser, local_help, starts=True)
    here.add_argument("--model", type=Path,
                      help="model.tar.gz or model folder (default: the newest successful local job's)")
    cloud = sagemaker_options(parser)
    cloud.add_argument("--job", help=f"the training job whose model to {verb} (default: the last `train`)")
    cloud.add_argument("--model-data", metavar="S3URI", help="a model.tar.gz in S3 instead of --job")
    return here, cloud


class Parser(argparse.ArgumentParser):
    """argparse, with each command's options grouped by where they apply (`where`), and an option given
    where it does not apply refused, rather than ignored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.where = {LOCAL: [], SAGEMAKER: []}

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        command = self._subparsers._group_actions[0].choices[parsed.command] if self._subparsers else self
        misplaced = misplaced_options(command, parsed)
        if misplaced and command.where[LOCAL]:  # a command that runs in one place only has nothing misplaced
            where = "on SageMaker (without --local)" if getattr(parsed, "local", None) else "with --local"
            command.error(f"{', '.join(misplaced)}: only {where} (see `launch.py {parsed.command} --help`)")
        return parsed


def build_parser(description=None):
    """launch.py's command line; `args.command` names the command to run. `description`: launch.py's own."""
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"image-classifier {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = add_command(commands, "data")
    data.add_argument("--sample", choices=["digits"], default="digits", help="which sample (default: digits)")
    data.add_argument("--dest", type=Path, default=SAMPLE_DIR, help=f"where to write it (default: {SAMPLE_DIR})")

    upload = add_command(commands, "upload")
    upload.add_argument("--data", required=True, help="dataset folder, e.g. dogImages")
    upload.add_argument("--s3", help="destination (default: s3://BUCKET/image-classifier/data/<folder name>)")
    upload.add_argument("--delete", action="store_true",
                        help="also remove the objects under the destination that no longer exist locally")
    aws.add_arguments(upload)

    tune = add_command(commands, "tune")
    tune.add_argument("--data", help="dataset in S3 (default: the one `upload` recorded)")
    tune.add_argument("--hp", action="append", metavar="KEY=VALUE", help="fixed hyperparameter, repeatable")
    add_preset(tune)
    tune.add_argument("--objective", choices=["best_valid_acc", "best_valid_loss"], default="best_valid_acc",
                      help="the saved model's validation accuracy, maximised (default), or its loss, minimised")
    tune.add_argument("--strategy", choices=["Bayesian", "Random"], default="Bayesian", help="search strategy")
    tune.add_argument("--max-jobs", type=int, default=8, help="training jobs in all (default 8)")
    tune.add_argument("--max-parallel-jobs", type=int, default=2, help="training jobs at a time (default 2)")
    tune.add_argument("--warm-start", nargs="+", metavar="TUNING_JOB", help="start from earlier tuning jobs")
    tune.add_argument("--job-name", help="tuning job name (default: ic-tune-<timestamp>, 32 characters at most)")
    tune.add_argument("--trial-debugging", action="store_true",
                      help="trials save tensors and run the rules (default: debug-hook=false rules=false)")
    tune.add_argument("--attach", metavar="TUNING_JOB", help="wait for a tuning job started earlier, print its best")
    add_job_arguments(tune, tune)
    aws.add_arguments(tune)

    train = add_command(commands, "train")
    train.add_argument("--data", help="dataset folder (dogImages layout); default: the digits sample. "
                                      "On SageMaker: an S3 URI, default: the one `upload` recorded")
    train.add_argument("--hp", action="append", metavar="KEY=VALUE", help="hyperparameter, repeatable")
    add_preset(train)
    train.add_argument("--job-name", help="job name (default: image-classifier-<timestamp>)")
    here = local_options(train, "train on this machine", starts=True)
    here.add_argument("--replace", action="store_true", help="remove an earlier local job of the same --job-name first")
    here.add_argument("--resume", action="store_true",
                      help="go on with the --job-name job that did not complete, from its checkpoint")
    here.add_argument("--verbose", action="store_true", help="show the job's whole output (always in its train.log)")
    here.add_argument("--keep-checkpoints", action="store_true",
                      help="keep a completed job's intermediate checkpoints (default: only its model)")
    train.add_argument("--jobs-dir", type=Path, default=LOCAL_JOBS_DIR, help=argparse.SUPPRESS)
    cloud = sagemaker_options(train)
    cloud.add_argument("--from-tuning", nargs="?", const=LAST, metavar="TUNING_JOB",
                       help="start from the best values of this tuning job (no name: the one `tune` recorded)")
    cloud.add_argument("--allow-interim", action="store_true",
                       help="--from-tuning while the tuning job still runs (its best so far)")
    cloud.add_argument("--builtin-rules", action="store_true",
                       help="also run SageMaker's built-in Debugger rules (accounts with Debugger access only)")
    cloud.add_argument("--no-debugger", action="store_true",
                       help="no Debugger hook or profiler configuration (accounts without Debugger); "
                            "the job's tensors and rules travel in its output data")
    cloud.add_argument("--attach", metavar="JOB", help="follow a training job started earlier")
    add_job_arguments(train, cloud)

    deploy = add_command(commands, "deploy")
    here, cloud = add_model_source(deploy, "serve on this machine", "deploy")
    add_local_port(here)
    here.add_argument("--detach", action="store_true", help="return once the server is ready, leave it running")
    cloud.add_argument("--endpoint", help="endpoint (and model) name (default: image-classifier-<timestamp>)")
    cloud.add_argument("--instance-type", help=f"endpoint instance (default {ENDPOINT_INSTANCE})")
    cloud.add_argument("--instance-count", type=positive_int, metavar="N", help="instances (default 1)")
    cloud.add_argument("--autoscale", metavar="MIN:MAX",
                       help="scale between MIN and MAX instances on invocations per instance")
    cloud.add_argument("--target-invocations", type=float, default=DEFAULT_TARGET_INVOCATIONS, metavar="N",
                       help="with --autoscale: invocations per instance per minute to keep (default "
                            f"{DEFAULT_TARGET_INVOCATIONS}, from the measured throughput: see docs/BATCH_AND_SCALE.md)")
    cloud.add_argument("--serverless", type=int, metavar="MEMORY_MB",
                       help="a serverless endpoint (CPU) with this memory: 2048, 3072, ... 6144")
    cloud.add_argument("--max-concurrency", type=int, default=5, metavar="N",
                       help="with --serverless: concurrent requests at most (default 5)")
    cloud.add_argument("--data-capture", type=int, metavar="PERCENT",
                       help="capture this share of requests and answers to s3://BUCKET/image-classifier/capture/")
    cloud.add_argument("--inference-ami", metavar="VERSION",
                       help="the endpoint's InferenceAmiVersion on GPU types (default on ml.g*/ml.p*: "
                            "one whose driver runs the image's CUDA 12, see docs/IMAGE_AND_GPUS.md)")
    cloud.add_argument("--sample-image", type=Path, help="picture for the first prediction "
                                                         "(default: one of the uploaded dataset's test pictures)")
    add_network_arguments(cloud)

    predict = add_command(commands, "predict")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="picture file(s) to classify")
    predict.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"labels per picture (default {DEFAULT_TOP_K})")
    predict.add_argument("--json", action="store_true", help="print the raw JSON response")
    add_local_port(local_options(predict, "ask the model served on this machine (`deploy --local`)"))
    sagemaker_options(predict).add_argument("--endpoint", help="endpoint (default: the one `deploy` recorded)")

    delete = add_command(commands, "delete")
    add_local_port(local_options(delete, "stop the model server on this machine (`deploy --local --detach`)"))
    cloud = sagemaker_options(delete)
    cloud.add_argument("--endpoint", help="the endpoint to delete with its config and model "
                                          "(default: the one `deploy` recorded)")
    cloud.add_argument("--all", action="store_true",
                       help="every endpoint, endpoint config and model tagged project=image-classifier")
    cloud.add_argument("--yes", action="store_true", help="with --all: do not ask for confirmation")

    transform = add_command(commands, "transform")
    transform.add_argument("--data", help="folder of pictures with --local, else an s3:// prefix "
                                          "(every file under it is sent)")
    transform.add_argument("--output", help="where the .out files go (default: <data>-transform beside it; "
                                            "SageMaker: s3://BUCKET/image-classifier/transform/<job>)")
    transform.add_argument("--max-concurrent", type=positive_int, metavar="N",
                           help="requests in flight (per instance on SageMaker; default: two per model-server worker)")
    transform.add_argument("--summarize", type=Path, metavar="OUT",
                           help="only summarize the .out files in OUT: a CSV and the label counts (with --data "
                                "FOLDER: outputs with no picture in it are flagged and left out)")
    transform.add_argument("--csv", type=Path, help="with --summarize: the CSV's path (default OUT/summary.csv)")
    here, cloud = add_model_source(transform, "run the model server on this machine", "use")
    here.add_argument("--port", type=int, default=TRANSFORM_PORT,
                      help=f"the local model server's port (default {TRANSFORM_PORT})")
    here.add_argument("--stop-on-bad", action="store_true",
                      help="stop at the first refused picture (default: go on, list them at the end, exit 2)")
    here.add_argument("--resume", action="store_true", help="send only the pictures that have no .out file yet")
    cloud.add_argument("--job-name", help="transform job (and model) name")
    cloud.add_argument("--instance-type", help=f"instance (default {TRANSFORM_INSTANCE})")
    cloud.add_argument("--instance-count", type=positive_int, default=1, help="instances (default 1)")
    add_network_arguments(cloud)

    jobs = add_command(commands, "jobs")
    jobs.add_argument("--jobs-dir", type=Path, default=LOCAL_JOBS_DIR, help=argparse.SUPPRESS)

    clean = add_command(commands, "clean")
    clean.add_argument("names", nargs="*", metavar="JOB", help="local job name(s) to remove (see `launch.py jobs`)")
    clean.add_argument("--older-than", metavar="AGE", help="remove the jobs older than this: 30m, 12h, 7d, 2w")
    clean.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    clean.add_argument("--jobs-dir", type=Path, default=LOCAL_JOBS_DIR, help=argparse.SUPPRESS)

    report = add_command(commands, "report")
    report.add_argument("--job", required=True, metavar="NAME",
                        help="the training job: a SageMaker job's name, or with --local a local job's name or folder")
    report.add_argument("--out", type=Path, help="output folder (default: reports/<job name>)")
    local_options(report, "a job on this machine (local_jobs/<name>, or its folder)")
    sagemaker_options(report)  # the AWS settings: the job's outputs come from S3, its log from CloudWatch
    return parser
