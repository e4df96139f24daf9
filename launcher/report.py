"""`launch.py report`: one self-contained HTML page (figures embedded as PNG) about a finished training job.

It reads only what the job left behind, through the platform contract: the smdebug tensors (train and
valid loss per step), the log's metric lines (accuracy per epoch, parsed with METRIC_DEFINITIONS), and the
reports in output/data (test predictions, rules.json, profiler and system metrics), plus the job's
hyperparameters. A local job is local_jobs/<name>/; a SageMaker job's outputs are downloaded from S3 first
(paths from DescribeTrainingJob). When the job has tensors but no rules.json, the rules are run here, as a
separate process (`python -m image_classifier.diagnostics.debugger_rules`), like any other reader of the tensors.
"""
import base64
import html
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from image_classifier import constants
from image_classifier.contract import TENSORS_FOLDER, MLPaths
from image_classifier.metrics import parse_metrics

from . import LOCAL_JOBS_DIR, PROJECT_DIR, LauncherError
from .terminal import printable

# boto3, smdebug and matplotlib are imported where they are used: slow imports that not every report needs.

REPORTS_DIR = PROJECT_DIR / "reports"
REPORT_FILE = "report.html"
MOST_CONFUSED = 10
TOP_OPERATORS = 15


@dataclass
class JobFiles:
    """Where one job's outputs are on this machine."""
    name: str
    data_dir: Path  # output/data
    tensors_dir: Path | None
    log_lines: list = field(default_factory=list)
    hyperparameters: dict = field(default_factory=dict)


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
    return JobFiles(name=folder.name, data_dir=paths.output_data,
                    tensors_dir=tensors if tensors.is_dir() else None,
                    log_lines=log.read_text(errors="replace").splitlines() if log.is_file() else [],
                    hyperparameters=json.loads(hps.read_text()) if hps.is_file() else {})


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
    return JobFiles(name=name, data_dir=data_dir, tensors_dir=tensors_dir, log_lines=_cloudwatch_lines(session, name),
                    hyperparameters=job.get("HyperParameters", {}))


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
    """(matrix[actual][predicted], per-class accuracy, most confused (actual, predicted, count) pairs)."""
    classes = predictions["classes"]
    matrix = [[0] * len(classes) for _ in classes]
    for actual, predicted in zip(predictions["actual"], predictions["predicted"]):
        matrix[actual][predicted] += 1
    per_class = [row[i] / sum(row) if sum(row) else float("nan") for i, row in enumerate(matrix)]
    pairs = sorted(((matrix[a][p], classes[a], classes[p]) for a in range(len(classes))
                    for p in range(len(classes)) if a != p and matrix[a][p]), reverse=True)[:MOST_CONFUSED]
    return matrix, per_class, [(a, p, n) for n, a, p in pairs]


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


# --------------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # Labels are data (class folder names): `$...$` must print as written, never go through math text or TeX.
    matplotlib.rcParams.update({"text.parse_math": False, "text.usetex": False})
    import matplotlib.pyplot as plt

    return plt


def figure_loss(series):
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    for label, (steps, values) in series.items():
        axes.plot(steps, values, label=f"{label} loss", marker="." if label == "valid" else None,
                  linestyle="none" if label == "valid" else "-")
    axes.set(xlabel="step (all modes)", ylabel="cross-entropy loss", title="Loss per step (smdebug tensors)")
    axes.set_yscale("log")
    axes.legend()
    return figure


def figure_accuracy(metrics):
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    for name in ("train_acc", "valid_acc"):
        values = metrics.get(name, [])
        axes.plot(range(1, len(values) + 1), values, marker="o", label=name)
    axes.set(xlabel="epoch", ylabel="accuracy", title="Accuracy per epoch", ylim=(0, 1.02))
    axes.legend()
    return figure


def figure_confusion(matrix, classes):
    plt = _pyplot()
    size = min(4 + len(classes) * 0.35, 16)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    if len(classes) <= 40:
        axes.set_xticks(range(len(classes)), classes, rotation=90)
        axes.set_yticks(range(len(classes)), classes)
        for a, row in enumerate(matrix):
            for p, count in enumerate(row):
                if count:
                    axes.text(p, a, count, ha="center", va="center", fontsize=7)
    axes.set(xlabel="predicted", ylabel="actual", title="Test confusion matrix")
    figure.tight_layout()
    return figure


def figure_per_class(per_class, classes):
    plt = _pyplot()
    order = sorted(range(len(classes)), key=lambda i: per_class[i])
    figure, axes = plt.subplots(figsize=(8, max(3, 0.22 * len(classes) + 1)))
    axes.barh([classes[i] for i in order], [per_class[i] for i in order], color="tab:green")
    axes.set(xlabel="test accuracy", title="Per-class test accuracy", xlim=(0, 1))
    figure.tight_layout()
    return figure


def figure_system(system):
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6))
    samples = system["samples"]
    times = [s["t"] for s in samples]
    for key, label in (("cpu_percent", "CPU %"), ("memory_percent", "memory %"), ("gpu_percent", "GPU %")):
        if samples and key in samples[0]:
            top.plot(times, [s.get(key) for s in samples], label=label)
    top.set(xlabel="seconds", ylabel="%", title="System utilisation", ylim=(0, 100))
    top.legend()
    data, compute = system["steps"]["data_seconds"], system["steps"]["compute_seconds"]
    share = [d / (d + c) if d + c else 0 for d, c in zip(data, compute)]
    bottom.plot(range(1, len(share) + 1), share, color="tab:red", label="share waiting for data")
    bottom.set(xlabel="training step", ylabel="share", ylim=(0, 1), title="Share of each step spent waiting for data")
    bottom.legend()
    figure.tight_layout()
    return figure


def save_png(figure, path):
    """Write the figure as PNG and return its bytes (the HTML embeds the same image)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ HTML
def _text(value):
    """Any value as HTML text or attribute value: every value on the page is data (rules.json, logs, names)."""
    return html.escape(str(value), quote=True)


def _table(header, rows):
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(png, alt):
    return f'<img alt="{_text(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse;"
         "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%}"
         ".triggered{color:#b00;font-weight:bold}.passed{color:#070}.not-applicable{color:#777}img{max-width:100%}")


def _number(value):
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value if value is not None else "")


def _profiler_rules_section(results):
    """The profiler rules (profiler_rules.py): status, statistic against threshold, finding, recommendation."""
    rows = "".join(
        f"<tr><td>{html.escape(r['rule'])}</td>"
        f"<td class=\"{html.escape(r['status'].replace(' ', '-'))}\">{html.escape(r['status'])}</td>"
        + "".join(f"<td>{html.escape(_number(r.get(key)))}</td>" for key in ("statistic", "threshold", "margin"))
        + f"<td>{html.escape(r.get('finding') or '')}</td><td>{html.escape(r.get('recommendation') or '')}</td></tr>"
        for r in results)
    return ("<h2>Profiler rules</h2><p>SageMaker's profiler rules, judged in the job over its system monitor and "
            "step timings (margin: how many times past the threshold; above 1 the rule fired).</p>"
            "<table id=\"profiler-rules\"><tr><th>rule</th><th>status</th><th>statistic</th><th>threshold</th>"
            f"<th>margin</th><th>finding</th><th>recommendation</th></tr>{rows}</table>")


def build(files, out_dir):
    """Write report.html and the PNG figures into out_dir; returns (report path, {figure name: PNG path})."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections, figures = [], {}

    def figure(name, make, *args):
        path = out_dir / f"{name}.png"
        png = save_png(make(*args), path)
        figures[name] = path
        return _image(png, name)

    series = loss_series(files.tensors_dir) if files.tensors_dir else {}
    sections.append("<h2>Loss</h2>" + (figure("loss", figure_loss, series) if series else
                                        "<p>No saved tensors (the job ran with debug-hook=false).</p>"))
    metrics = parse_metrics(files.log_lines)
    if metrics.get("train_acc"):
        final = ", ".join(f"{k} {metrics[k][-1]:.4f}" for k in ("test_loss", "test_acc") if k in metrics)
        sections.append("<h2>Accuracy</h2>" + figure("accuracy", figure_accuracy, metrics)
                        + (f"<p>Test: {final}</p>" if final else ""))
    predictions = _read_json(files.data_dir / constants.PREDICTIONS_FILE)
    if predictions:
        matrix, per_class, pairs = confusion(predictions)
        classes = predictions["classes"]
        sections.append("<h2>Test confusion matrix</h2>" + figure("confusion", figure_confusion, matrix, classes)
                        + "<h3>Most confused pairs</h3>"
                        + (_table(["actual", "predicted as", "pictures"], pairs) if pairs else "<p>None.</p>")
                        + "<h3>Per-class accuracy</h3>" + figure("per_class_accuracy", figure_per_class, per_class, classes))
    rules = _read_json(files.data_dir / constants.RULES_FILE)
    if rules is None and files.tensors_dir:
        rules = run_rules(files.tensors_dir, out_dir / constants.RULES_FILE)
    if rules:
        rows = "".join(
            f"<tr><td>{_text(r['rule'])}</td><td class=\"{_text(str(r['status']).replace(' ', '-'))}\">"
            f"{_text(r['status'])}</td>"
            f"<td>{_text(r['findings'][0]['message'] if r['findings'] else r['description'])}</td></tr>"
            for r in rules["rules"])
        sections.append(f"<h2>Rules</h2><table><tr><th>rule</th><th>status</th><th>finding / what it checks</th></tr>"
                        f"{rows}</table>")
    if rules and rules.get("profiler_rules"):
        sections.append(_profiler_rules_section(rules["profiler_rules"]))
    operators = _read_json(files.data_dir / constants.PROFILER_OPS_FILE)
    system = _read_json(files.data_dir / constants.SYSTEM_METRICS_FILE)
    if operators or system:
        part = "<h2>Profiler</h2>"
        if operators:
            part += (f"<p>Top operators by self CPU time over the profiled steps (trace: "
                     f"{constants.PROFILER_TRACE_FILE} in the job's output data).</p>"
                     + _table(["operator", "calls", "self CPU ms", "total CPU ms", "self device ms"],
                              [(o["name"], o["calls"], f"{o['self_cpu_ms']:.2f}", f"{o['cpu_total_ms']:.2f}",
                                f"{o['self_device_ms']:.2f}") for o in operators[:TOP_OPERATORS]]))
        if system:
            part += ("<h3>System metrics</h3>" + _table(["measure", "value"], [
                (k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in system["summary"].items()])
                + figure("system", figure_system, system))
        sections.append(part)
    if files.hyperparameters:
        sections.append("<h2>Hyperparameters</h2>" + _table(["key", "value"], sorted(files.hyperparameters.items())))
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Training report: {_text(files.name)}"
            f"</title><style>{STYLE}</style></head><body><h1>Training report: {_text(files.name)}</h1>"
            + "".join(sections) + "</body></html>")
    report = out_dir / REPORT_FILE
    report.write_text(page)
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
