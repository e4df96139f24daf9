"""`launch.py report`: one self-contained HTML page (figures inline as SVG, and as PNG files beside it) about a
finished training job.

It reads only what the job left behind, through the platform contract: the smdebug tensors (train and
valid loss per step), the log's metric lines (accuracy per epoch, parsed with METRIC_DEFINITIONS), and the
reports in output/data (test predictions, rules.json, profiler and system metrics), plus the job's
hyperparameters. A local job is local_jobs/<name>/; a SageMaker job's outputs are downloaded from S3 first
(paths from DescribeTrainingJob). When the job has tensors but no rules.json, the rules are run here, as a
separate process (`python -m image_classifier.diagnostics.debugger_rules`), like any other reader of the tensors.
"""
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from image_classifier import constants
from image_classifier.contract import TENSORS_FOLDER, MLPaths
from image_classifier.metrics import parse_metrics
from image_classifier.training.hyperparameters import HyperparameterError, Hyperparameters

from . import LOCAL_JOBS_DIR, PROJECT_DIR, LauncherError
from . import report_figures as charts, report_html as html
from .terminal import printable

# boto3, smdebug and matplotlib are imported where they are used: slow imports that not every report needs.

REPORTS_DIR = PROJECT_DIR / "reports"
REPORT_FILE = "report.html"
MOST_CONFUSED = 15  # rows of the most-confused-pairs table
TOP_OPERATORS = 15


@dataclass
class JobFiles:
    """Where one job's outputs are on this machine."""
    name: str
    data_dir: Path  # output/data
    tensors_dir: Path | None
    log_lines: list = field(default_factory=list)
    hyperparameters: dict = field(default_factory=dict)
    instance: str | None = None  # where it ran: "1 x ml.g4dn.xlarge", or this machine
    started: datetime | None = None  # SageMaker's times; a local job's come from its log
    ended: datetime | None = None


# ------------------------------------------------------------------------------------------- sources
def local_job(job):
    """A local job by folder or by name (local_jobs/<name>)."""
    folder = Path(job)
    if not folder.is_dir():
        folder = LOCAL_JOBS_DIR / str(job)
    paths = MLPaths(folder)
    if not paths.output.is_dir():
        raise LauncherError(f"No local training job at {job} (looked in {folder}): give a job folder or a name "
                            f"under {LOCAL_JOBS_DIR}.")
    log = folder / "train.log"
    hps = paths.hyperparameters
    tensors = paths.tensors
    hosts = len((_read_json(paths.resource_config) or {}).get("hosts", [])) or 1
    return JobFiles(name=folder.name, data_dir=paths.output_data,
                    tensors_dir=tensors if tensors.is_dir() else None,
                    log_lines=log.read_text(errors="replace").splitlines() if log.is_file() else [],
                    hyperparameters=json.loads(hps.read_text()) if hps.is_file() else {},
                    instance=f"this machine (a local job, {hosts} host{'s' if hosts > 1 else ''})")


def sagemaker_job(name, work_dir, session=None):
    """Download a SageMaker job's output data and tensors (paths from DescribeTrainingJob) into work_dir.
    The tensors are where the job put them: under the Debugger hook's S3 path, or (a job without Debugger,
    `train --no-debugger`) inside its output.tar.gz."""
    import boto3

    session = session or boto3.Session()
    sagemaker = session.client("sagemaker")
    try:
        job = sagemaker.describe_training_job(TrainingJobName=name)
    except sagemaker.exceptions.ClientError as error:
        raise LauncherError(f"Cannot describe training job {name}: {error}") from None
    s3 = session.client("s3")
    data_dir = MLPaths(work_dir).output_data
    data_dir.mkdir(parents=True, exist_ok=True)
    output = job.get("OutputDataConfig", {}).get("S3OutputPath")
    if output:
        archive = Path(work_dir) / "output.tar.gz"
        bucket, key = _split_s3(f"{output.rstrip('/')}/{name}/output/output.tar.gz")
        try:
            s3.download_file(bucket, key, str(archive))
            with tarfile.open(archive) as tar:
                tar.extractall(data_dir, filter="data")  # refuses members that would land outside data_dir
        except Exception as error:  # noqa: BLE001 - a job without output data still has a report
            print(f"note: no output data at s3://{bucket}/{key} ({error})")
    tensors_dir = data_dir / TENSORS_FOLDER if (data_dir / TENSORS_FOLDER).is_dir() else None
    hook_output = job.get("DebugHookConfig", {}).get("S3OutputPath")
    if hook_output and tensors_dir is None:
        # SageMaker syncs LocalPath to <S3OutputPath>/<job name>/debug-output.
        prefix = f"{hook_output.rstrip('/')}/{name}/debug-output"
        tensors_dir = _download_prefix(s3, prefix, MLPaths(work_dir).tensors)
    resources = job.get("ResourceConfig", {})
    return JobFiles(name=name, data_dir=data_dir, tensors_dir=tensors_dir, log_lines=_cloudwatch_lines(session, name),
                    hyperparameters=job.get("HyperParameters", {}),
                    instance=f"{resources.get('InstanceCount', 1)} x {resources.get('InstanceType', '?')} (SageMaker)",
                    started=job.get("TrainingStartTime"), ended=job.get("TrainingEndTime"))


def _split_s3(uri):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def _download_prefix(s3, uri, target):
    """Every object under the prefix into `target`, keeping the layout; a key that would land outside
    `target` (`../` in it, or an absolute part) is skipped with a note."""
    bucket, prefix = _split_s3(uri)
    target = Path(target).resolve()
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) + 1:]
            if item["Key"].endswith("/"):
                continue  # a "folder" object (the console's Create folder): no file to write
            path = (target / relative).resolve()
            if not relative or not path.is_relative_to(target) or path == target:
                print(f"note: skipped s3://{bucket}/{printable(item['Key'])}: it would be written outside {target}")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(path))
            count += 1
    return target if count else None


LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def _cloudwatch_lines(session, name):
    """The job's log (for the per-epoch metric lines), every page of every stream; empty when it cannot be
    read. GetLogEvents pages forward until the token it returns is the one it was given."""
    try:
        logs = session.client("logs")
        lines = []
        # A job's streams are `<job>/algo-N-<time>`: the prefix ends at the `/`, or job `run1` would also read `run10`'s.
        for page in logs.get_paginator("describe_log_streams").paginate(logGroupName=LOG_GROUP,
                                                                       logStreamNamePrefix=f"{name}/"):
            for stream in page.get("logStreams", []):
                token = None
                while True:
                    request = {"logGroupName": LOG_GROUP, "logStreamName": stream["logStreamName"], "startFromHead": True}
                    if token:
                        request["nextToken"] = token
                    events = logs.get_log_events(**request)
                    lines += [e["message"] for e in events.get("events", [])]
                    # A page can be empty while more follow: only a repeated token means the end.
                    if events.get("nextForwardToken") in (None, token):
                        break
                    token = events["nextForwardToken"]
        return lines
    except Exception as error:  # noqa: BLE001 - the report is still useful without the accuracy curve
        print(f"note: cannot read the job's log from CloudWatch ({error}); no accuracy per epoch")
        return []


# ----------------------------------------------------------------------------------------- data
def loss_series(tensors_dir):
    """{'train': (global steps, losses), 'valid': (...)} from the smdebug tensors."""
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")  # before smdebug's import, which reads it
    from smdebug import modes
    from smdebug.trials import create_trial

    trial = create_trial(str(tensors_dir))
    names = [n for n in trial.tensor_names(collection="losses") if n.endswith("_output_0")]
    if not names:
        return {}
    tensor = trial.tensor(names[0])
    series = {}
    for label, mode in (("train", modes.TRAIN), ("valid", modes.EVAL)):
        steps = tensor.steps(mode=mode)
        series[label] = ([trial.global_step(mode, s) for s in steps],
                         [float(tensor.value(s, mode=mode)) for s in steps])
    return series


def confusion(predictions):
    """(matrix[actual][predicted], per-class accuracy, the most confused (actual, predicted, count, share of the
    actual class's pictures) pairs, most first)."""
    classes = predictions["classes"]
    matrix = [[0] * len(classes) for _ in classes]
    for actual, predicted in zip(predictions["actual"], predictions["predicted"]):
        matrix[actual][predicted] += 1
    per_class = [row[i] / sum(row) if sum(row) else float("nan") for i, row in enumerate(matrix)]
    pairs = sorted((-matrix[a][p], a, p) for a in range(len(classes)) for p in range(len(classes))
                   if a != p and matrix[a][p])[:MOST_CONFUSED]
    return matrix, per_class, [(classes[a], classes[p], -n, -n / sum(matrix[a])) for n, a, p in pairs]


def run_rules(tensors_dir, out_file):
    """The rules over a job's tensors, in their own process (the launcher does not import training code)."""
    result = subprocess.run([sys.executable, "-m", "image_classifier.diagnostics.debugger_rules", str(tensors_dir), "--out", str(out_file)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"note: the rules could not run: {result.stderr.strip()[-500:]}")
        return None
    return json.loads(Path(out_file).read_text())


def _read_json(path):
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------ facts
# The job's log lines (logging's "%(asctime)s %(levelname)s %(message)s", locally and in CloudWatch).
LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})[,.]\d+ ")
LOG_PICTURES = re.compile(r"Classes: (\d+) \(.*; pictures: ([^;]*)$")
LOG_DEVICE = re.compile(r": [\d.]+M parameters, [\d.]+M trainable, on (\S+)$")
# The int8 model's verdict (training/quantize.py: its decision, both accuracies and the reason, or why none was made).
LOG_INT8 = re.compile(r"(int8 model (?:ACCEPTED|REJECTED): .*|No int8 model: .*)$")
# The metrics the header shows, in this order, when the job printed them.
HEADER_METRICS = ("test_acc", "test_loss", "best_valid_acc", "best_valid_loss", "images_per_sec")


def _last_match(pattern, lines):
    return next((m for m in map(pattern.search, reversed(lines)) if m), None)


def _log_times(lines):
    times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S") for m in map(LOG_TIME.match, lines) if m]
    return (times[0], times[-1]) if times else (None, None)


def _when(moment):
    """A job's start as the header shows it: SageMaker's times in UTC, a local log's as written."""
    if moment is None:
        return None
    if moment.tzinfo:
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


def _duration(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def job_facts(files, metrics):
    """The header's rows: job, date, dataset, where it ran, how long, final metrics."""
    started, ended = files.started, files.ended
    if started is None:
        started, ended = _log_times(files.log_lines)
    pictures, device = _last_match(LOG_PICTURES, files.log_lines), _last_match(LOG_DEVICE, files.log_lines)
    int8 = _last_match(LOG_INT8, files.log_lines)
    final = [f"{name} {values[-1]:.4g}" for name in HEADER_METRICS if (values := metrics.get(name))]
    return {
        "job": files.name,
        "date": _when(started),
        "dataset": f"{pictures.group(1)} classes; pictures: {pictures.group(2)}" if pictures else None,
        "instance": files.instance,
        "device": device.group(1) if device else None,
        "duration": _duration((ended - started).total_seconds()) if started and ended else None,
        "final metrics": ", ".join(final) or None,
        "int8 model": int8.group(1) if int8 else None,
    }


def hyperparameter_rows(raw):
    """(key, value, from) for every hyperparameter the job used: its own values, the defaults it did not set,
    and the platform's keys. Values this version cannot read are listed as the job gave them."""
    defaults = Hyperparameters().to_strings()
    try:
        used = Hyperparameters.from_strings(raw).to_strings()
    except HyperparameterError:
        used = {**defaults, **raw}
    rows = [(key, value, "default" if key not in raw else "set by the job") for key, value in used.items()]
    rows += [(key, value, "platform") for key, value in sorted(raw.items()) if key not in used]
    return rows


# ------------------------------------------------------------------------------------------ build
def build(files, out_dir):
    """Write report.html and the PNG figures into out_dir; returns (report path, {figure name: PNG path})."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections, figures = [], {}

    def figure(name, make, *args):
        path = out_dir / f"{name}.png"
        svg = charts.save(make(*args), path)
        figures[name] = path
        return html.figure(svg, name)

    metrics = parse_metrics(files.log_lines)
    sections.append(html.header_section(job_facts(files, metrics)))
    series = loss_series(files.tensors_dir) if files.tensors_dir else {}
    sections.append("<h2>Loss</h2>" + (figure("loss", charts.figure_loss, series) if series else
                                        "<p>No saved tensors (the job ran with debug-hook=false).</p>"))
    if metrics.get("train_acc"):
        sections.append("<h2>Accuracy</h2>" + figure("accuracy", charts.figure_accuracy, metrics))
    predictions = _read_json(files.data_dir / constants.PREDICTIONS_FILE)
    if predictions:
        matrix, per_class, pairs = confusion(predictions)
        classes = predictions["classes"]
        sections.append(
            "<h2>Test confusion matrix</h2>" + figure("confusion", charts.figure_confusion, matrix, classes)
            + "<h3>Most confused pairs</h3>"
            + (html.table(["true", "predicted as", "pictures", "share of the true class"],
                          [(a, p, n, f"{share:.0%}") for a, p, n, share in pairs], table_id="confused")
               if pairs else "<p>None.</p>")
            + "<h3>Per-class accuracy</h3>" + figure("per_class_accuracy", charts.figure_per_class, per_class, classes))
    rules = _read_json(files.data_dir / constants.RULES_FILE)
    if rules is None and files.tensors_dir:
        rules = run_rules(files.tensors_dir, out_dir / constants.RULES_FILE)
    if rules and rules.get("rules"):
        sections.append(html.rules_section(
            "Rules", "Our Debugger rules over the saved tensors (margin: how many times past the threshold; 1 or "
            "more fired).", rules["rules"], "debugger-rules"))
    if rules and rules.get("profiler_rules"):
        sections.append(html.rules_section(
            "Profiler rules", "SageMaker's profiler rules, judged in the job over its system monitor and step "
            "timings (margin: how many times past the threshold; above 1 the rule fired).", rules["profiler_rules"],
            "profiler-rules"))
    operators = _read_json(files.data_dir / constants.PROFILER_OPS_FILE)
    system = _read_json(files.data_dir / constants.SYSTEM_METRICS_FILE)
    if operators or system:
        part = "<h2>Profiler</h2>"
        if operators:
            part += (f"<p>Top operators by self CPU time over the profiled steps (trace: "
                     f"{constants.PROFILER_TRACE_FILE} in the job's output data).</p>"
                     + html.table(["operator", "calls", "self CPU ms", "total CPU ms", "self device ms"],
                                  [(o["name"], o["calls"], f"{o['self_cpu_ms']:.2f}", f"{o['cpu_total_ms']:.2f}",
                                    f"{o['self_device_ms']:.2f}") for o in operators[:TOP_OPERATORS]]))
        if system:
            part += ("<h3>System metrics</h3>" + html.table(["measure", "value"], [
                (k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in system["summary"].items()])
                + figure("system", charts.figure_system, system))
        sections.append(part)
    sections.append(html.hyperparameters_section(hyperparameter_rows(files.hyperparameters)))
    report = out_dir / REPORT_FILE
    report.write_text(html.page(f"Training report: {files.name}", sections))
    return report, figures


def report(local=None, job=None, out=None):
    """The `report` command: returns the report's path."""
    if job:
        out_dir = Path(out) if out else REPORTS_DIR / job
        files = sagemaker_job(job, out_dir / "job")
    else:
        files = local_job(local)
        out_dir = Path(out) if out else REPORTS_DIR / files.name
    path, _ = build(files, out_dir)
    return path
