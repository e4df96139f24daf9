"""`launch.py report` on a real local job: the page, and figures that are real images of the right series."""
import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import launch
from debug_runs import HEALTHY_JOB_HPS, healthy_job
from image_classifier.metrics import parse_metrics
from image_classifier.diagnostics.profiler_rules import ALL_PROFILER_RULES
from launcher import LauncherError, report


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return healthy_job(tmp_path_factory.getbasetemp() / "debug-jobs")


@pytest.fixture(scope="module")
def built(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return report.build(report.local_job(job.dir), out)


def assert_real_image(path):
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert image.format == "PNG" and min(image.size) >= 200
    assert pixels.std() > 10, f"{path.name} is blank"


def test_report_page_embeds_every_figure(built):
    page_path, figures = built
    assert set(figures) == {"loss", "accuracy", "confusion", "per_class_accuracy", "system"}
    page = page_path.read_text()
    for name, path in figures.items():
        assert_real_image(path)
        # self-contained: each PNG is in the page itself
        assert base64.b64encode(path.read_bytes()).decode() in page, name
    for section in ("Loss", "Accuracy", "Test confusion matrix", "Most confused pairs", "Rules", "Profiler",
                    "System metrics", "Hyperparameters", "LossNotDecreasing", "aten::"):
        assert section in page, section
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # nothing fetched from outside


def test_loss_figure_shows_the_saved_train_and_valid_losses(job):
    series = report.loss_series(job.dir / "output" / "tensors")
    epochs = int(HEALTHY_JOB_HPS["epochs"])
    assert len(series["train"][0]) == 9 * epochs and len(series["valid"][0]) == 5 * epochs
    figure = report.figure_loss(series)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {"train loss", "valid loss"}
    assert list(lines["train loss"].get_ydata()) == series["train"][1]
    # validation passes come after each epoch's training steps
    assert series["valid"][0][0] > series["train"][0][8]


def test_accuracy_figure_shows_the_logged_epochs(job):
    metrics = parse_metrics(job.log_file.read_text().splitlines())
    figure = report.figure_accuracy(metrics)
    lines = {line.get_label(): list(line.get_ydata()) for line in figure.axes[0].get_lines()}
    assert lines == {"train_acc": metrics["train_acc"], "valid_acc": metrics["valid_acc"]}
    assert len(lines["train_acc"]) == int(HEALTHY_JOB_HPS["epochs"])


def test_confusion_matrix_counts_the_test_predictions(job):
    predictions = json.loads((job.dir / "output" / "data" / "test_predictions.json").read_text())
    matrix, per_class, pairs = report.confusion(predictions)
    assert sum(map(sum, matrix)) == len(predictions["actual"]) == 18
    correct = sum(a == p for a, p in zip(predictions["actual"], predictions["predicted"]))
    assert sum(matrix[i][i] for i in range(len(matrix))) == correct
    assert all(0 <= acc <= 1 for acc in per_class)
    assert sum(n for _, _, n in pairs) <= len(predictions["actual"]) - correct


def test_confusion_helpers_on_a_known_case():
    matrix, per_class, pairs = report.confusion({"classes": ["a", "b", "c"], "actual": [0, 0, 1, 1, 2, 2],
                                                 "predicted": [0, 1, 1, 1, 0, 0]})
    assert matrix == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    assert per_class == [0.5, 1.0, 0.0]
    assert pairs == [("c", "a", 2), ("a", "b", 1)]


def test_report_command_by_job_folder(job, tmp_path, capsys):
    assert launch.main(["report", "--local", str(job.dir), "--out", str(tmp_path)]) == 0
    assert f"Report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_report_of_a_missing_job_is_a_clear_error(tmp_path):
    with pytest.raises(LauncherError, match="No local training job"):
        report.local_job(tmp_path / "nope")


def test_report_escapes_every_value_and_draws_names_as_written(tmp_path):
    """Hostile outputs: a rule status with markup (rules.json is the job's output), a class folder named like
    matplotlib math text that does not parse, a hyperparameter with markup."""
    data = tmp_path / "data"
    data.mkdir()
    script = "<script>alert(1)</script>"
    (data / "rules.json").write_text(json.dumps({"rules": [
        {"rule": "LossNotDecreasing", "status": f'passed" onmouseover="x {script}', "description": script,
         "findings": []}]}))
    classes = [r"$\undefinedcommand$", "b<i>"]
    (data / "test_predictions.json").write_text(json.dumps(
        {"classes": classes, "predicted": [0, 1, 1, 0], "actual": [0, 1, 0, 1]}))
    files = report.JobFiles(name=f"job{script}", data_dir=data, tensors_dir=None,
                            hyperparameters={"lr": script})
    page_path, figures = report.build(files, tmp_path / "out")
    page = page_path.read_text()
    assert "<script" not in page and "onmouseover=\"" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert set(figures) == {"confusion", "per_class_accuracy"}
    labels = [tick.get_text() for tick in report.figure_per_class([1.0, 0.0], classes).axes[0].get_yticklabels()]
    assert r"$\undefinedcommand$" in labels


class _RulesTable(HTMLParser):
    """The rows (cell texts) of the table with id `profiler-rules` in a page."""

    def __init__(self):
        super().__init__()
        self.inside, self.rows, self.cell = False, [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.inside = dict(attrs).get("id") == "profiler-rules"
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def test_report_shows_the_profiler_rules_in_a_real_browser(built):
    """Chromium (Debian's package; .ci/run installs it) renders the page; its DOM holds one row per profiler
    rule with its status, finding and recommendation."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    page_path, _ = built
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          page_path.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    table = _RulesTable()
    table.feed(dom)
    header, *rows = table.rows
    assert header == ["rule", "status", "statistic", "threshold", "margin", "finding", "recommendation"]
    by_rule = {row[0]: dict(zip(header, row)) for row in rows}
    assert list(by_rule) == [r.__name__ for r in ALL_PROFILER_RULES]
    # the real job ran on CPU: the GPU rules say so; the data-loader rule judged its steps
    assert by_rule["LowGPUUtilization"]["status"] == "not applicable"
    assert by_rule["LowGPUUtilization"]["finding"].startswith("not applicable on CPU")
    assert by_rule["Dataloader"]["status"] in ("passed", "triggered")
    assert "waiting for data" in by_rule["Dataloader"]["finding"] and float(by_rule["Dataloader"]["statistic"]) >= 0
    assert all(row["recommendation"] for row in by_rule.values())
