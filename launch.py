#!/usr/bin/env python3
"""Train, tune, deploy and query the image classifier on SageMaker, or run the same jobs locally.

    python launch.py data --sample digits            # write the embedded sample dataset
    python launch.py train --local                   # train on this machine, in the image or as a process

Run `python launch.py COMMAND --help` for each command's options.
"""
import argparse
import datetime
import os
import sys
from pathlib import Path

from launcher import LOCAL_JOBS_DIR, SAMPLE_DIR, LauncherError

# The demo's training run: digits are tiny, so a small ResNet from scratch at 32 px learns them in a minute.
DIGITS_HYPERPARAMETERS = {
    "arch": "resnet18", "pretrained": "false", "trainable-layers": "4", "image-size": "32",
    "epochs": "8", "batch-size": "32", "lr": "0.002", "augment": "none", "workers": "2",
}


def job_name(prefix="image-classifier"):
    """A SageMaker-valid, unique job name."""
    return f"{prefix}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S-%f}"[:63]


def parse_hp(pairs):
    """`--hp KEY=VALUE` pairs into a dict (values stay strings, as SageMaker passes them)."""
    hps = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LauncherError(f"--hp expects KEY=VALUE, got {pair!r}")
        hps[key.strip()] = value.strip()
    return hps


# ---------------------------------------------------------------------------------------------- data
def cmd_data(args):
    from launcher.sample_data import write_digits

    counts = write_digits(args.dest)
    print(f"Digits sample in {args.dest}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# --------------------------------------------------------------------------------------------- train
def cmd_train(args):
    if args.local:
        return train_local(args)
    return train_sagemaker(args)


def train_sagemaker(args):
    raise LauncherError("train on SageMaker: not implemented yet")  # issue 5 (AWS recipes)


def train_local(args):
    from launcher import local_training

    data = Path(args.data) if args.data else SAMPLE_DIR
    hyperparameters = dict(DIGITS_HYPERPARAMETERS) if not args.data else {}
    hyperparameters.update(parse_hp(args.hp))
    if not args.data:
        from launcher.sample_data import write_digits

        write_digits(SAMPLE_DIR)
    mode = args.local
    if mode == "auto":
        mode = "process"
        print("local mode: process (no docker image runner in this version)")
    name = args.job_name or job_name()
    job = local_training.prepare_job(args.jobs_dir, name, {"train": data}, hyperparameters)
    print(f"Training job {name} ({mode}) in {job.dir}")
    exit_code = local_training.run_process(job)
    metrics = local_training.finish(job)
    summary = " ".join(f"{k}={v:g}" for k, v in metrics.items())
    if not job.succeeded:
        raise LauncherError(f"Training job {name} failed (exit {exit_code}): {job.failure_reason or 'see ' + str(job.log_file)}")
    print(f"\nTraining job {name} completed. {summary}\nModel artifact: {job.model_tar}\nLog: {job.log_file}")


# --------------------------------------------------------------------------------- deploy / predict
def cmd_deploy(args):
    if args.local:
        from launcher import local_serving

        return local_serving.deploy(model=args.model, port=args.port, mode=args.local, detach=args.detach)
    return deploy_sagemaker(args)


def deploy_sagemaker(args):
    raise LauncherError("deploy on SageMaker: not implemented yet")  # issue 5 (AWS recipes)


def cmd_predict(args):
    if args.local:
        from launcher import local_serving

        return local_serving.predict(args.images, port=args.port, top_k=args.top_k, as_json=args.json)
    return predict_sagemaker(args)


def predict_sagemaker(args):
    raise LauncherError("predict on SageMaker: not implemented yet")  # issue 5 (AWS recipes)


def cmd_delete(args):
    if args.local:
        from launcher import local_serving

        return local_serving.delete(port=args.port)
    return delete_sagemaker(args)


def delete_sagemaker(args):
    raise LauncherError("delete on SageMaker: not implemented yet")  # issue 5 (AWS recipes)


# ------------------------------------------------------------------------------------------------ CLI
def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="write the embedded sample dataset (digits) in the dogImages layout",
                               description="Write scikit-learn's 1,797 handwritten digits as PNG files in the "
                                           "dogImages layout (train/ valid/ test/, one folder per class).")
    data.add_argument("--sample", choices=["digits"], default="digits", help="which sample (default: digits)")
    data.add_argument("--dest", type=Path, default=SAMPLE_DIR, help=f"where to write it (default: {SAMPLE_DIR})")
    data.set_defaults(func=cmd_data)

    train = commands.add_parser("train", help="run the training job (locally with --local)",
                                description="Run the training job. With --local it runs on this machine over "
                                            "an /opt/ml-shaped tree in local_jobs/<job-name>/.")
    train.add_argument("--local", nargs="?", const="auto", choices=["auto", "docker", "process"],
                       help="run on this machine: in the image (docker), as a plain process, or auto")
    train.add_argument("--data", help="dataset folder (dogImages layout); default: the digits sample")
    train.add_argument("--hp", action="append", metavar="KEY=VALUE", help="hyperparameter, repeatable")
    train.add_argument("--job-name", help="job name (default: image-classifier-<timestamp>)")
    train.add_argument("--jobs-dir", type=Path, default=LOCAL_JOBS_DIR, help=argparse.SUPPRESS)
    train.set_defaults(func=cmd_train)

    deploy = commands.add_parser("deploy", help="serve a model (locally with --local, or as a SageMaker endpoint)",
                                 description="Serve a model. With --local it runs the model server on this "
                                             "machine and waits until the model answers.")
    deploy.add_argument("--local", nargs="?", const="auto", choices=["auto", "docker", "process"],
                        help="serve on this machine: in the image (docker), as a plain process, or auto")
    deploy.add_argument("--model", type=Path,
                        help="model.tar.gz or model folder (default: the newest successful local job's)")
    deploy.add_argument("--port", type=int, default=8080, help="local port (default 8080)")
    deploy.add_argument("--detach", action="store_true", help="return once the server is ready, leave it running")
    deploy.set_defaults(func=cmd_deploy)

    predict = commands.add_parser("predict", help="send pictures to a served model, print the top-k labels",
                                  description="Send each picture to the model and print its top-k labels.")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--local", action="store_true", help="ask the locally served model")
    predict.add_argument("--port", type=int, default=8080, help="local port (default 8080)")
    predict.add_argument("--top-k", type=int, default=5, help="labels per picture (default 5)")
    predict.add_argument("--json", action="store_true", help="print the raw JSON response")
    predict.set_defaults(func=cmd_predict)

    delete = commands.add_parser("delete", help="stop a served model (local server, or SageMaker endpoint)",
                                 description="Stop a served model: the local server with --local.")
    delete.add_argument("--local", action="store_true", help="stop the local model server")
    delete.add_argument("--port", type=int, default=8080, help="local port (default 8080)")
    delete.set_defaults(func=cmd_delete)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except LauncherError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
