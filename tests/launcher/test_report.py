"""`launch.py report` on a real local job: the page, and figures that are real images of the right series."""
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import launch
from conftest import require_container_packages

require_container_packages()  # before the imports below, which need torch
from debug_runs import HEALTHY_JOB_HPS, healthy_job
from image_classifier.metrics import format_metrics, parse_metrics
from image_classifier.training.hyperparameters import Hyperparameters
from image_classifier.diagnostics.profiler_rules import ALL_PROFILER_RULES
from launcher import LauncherError, report, report_figures


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
        # self-contained: each figure is drawn in the page itself
        assert f'<figure id="figure-{name}"><svg' in page, name
    for section in ("The job", "Loss", "Accuracy", "Test confusion matrix", "Most confused pairs", "Rules",
                    "Profiler", "System metrics", "Hyperparameters", "LossNotDecreasing", "aten::"):
        assert section in page, section
    assert "<script" not in page and not re.search(r"(src|href)=[\"']https?:", page)  # nothing fetched


def test_loss_figure_shows_the_saved_train_and_valid_losses(job):
    series = report.loss_series(job.dir / "output" / "tensors")
    epochs = int(HEALTHY_JOB_HPS["epochs"])
    assert len(series["train"][0]) == 9 * epochs and len(series["valid"][0]) == 5 * epochs
    figure = report_figures.figure_loss(series)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {"train loss", "valid loss"}
    assert list(lines["train loss"].get_ydata()) == series["train"][1]
    # validation passes come after each epoch's training steps
    assert series["valid"][0][0] > series["train"][0][8]


def test_accuracy_figure_shows_the_logged_epochs(job):
    metrics = parse_metrics(job.log_file.read_text().splitlines())
    figure = report_figures.figure_accuracy(metrics)
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
    assert sum(n for _, _, n, _ in pairs) <= len(predictions["actual"]) - correct


def test_confusion_helpers_on_a_known_case():
    matrix, per_class, pairs = report.confusion({"classes": ["a", "b", "c"], "actual": [0, 0, 1, 1, 2, 2],
                                                 "predicted": [0, 1, 1, 1, 0, 0]})
    assert matrix == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    assert per_class == [0.5, 1.0, 0.0]
    assert pairs == [("c", "a", 2, 1.0), ("a", "b", 1, 0.5)]  # (true, predicted as, pictures, share of true)


def test_report_command_by_job_folder(job, tmp_path, capsys):
    assert launch.main(["report", "--local", "--job", str(job.dir), "--out", str(tmp_path)]) == 0
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
    assert r"$\undefinedcommand$" in svg_texts(report_figures.figure_per_class([1.0, 0.0], classes))


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
    # a rule that cannot apply gives no advice and no figures; the others keep theirs
    for row in by_rule.values():
        applies = row["status"] != "not applicable"
        assert bool(row["recommendation"]) == applies and bool(row["threshold"]) == applies, row


# ------------------------------------------------------------------------------ the page in a browser
def svg_texts(figure):
    """Every text a figure draws, as a viewer shows it: its SVG with text kept as text, tags stripped."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg")
    report_figures.pyplot().close(figure)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", t)).split())
            for t in re.findall(r"<text\b[^>]*>(.*?)</text>", buffer.getvalue(), re.S)]


def browser_dom(page_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                             page_path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert "<body>" in result.stdout, result.stderr[-2000:]
    return result.stdout


class _Page(HTMLParser):
    """What a browser's DOM shows: each table's rows (by id) and each figure's drawn texts (by id)."""

    def __init__(self, dom):
        super().__init__()
        self.tables, self.figures = {}, {}
        self._table = self._figure = self._cell = self._text = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""
        elif tag == "figure":
            self._figure = self.figures.setdefault(attrs.get("id"), [])
        elif tag == "text" and self._figure is not None:
            self._text = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "figure":
            self._figure = None
        elif tag == "text" and self._text is not None:
            self._figure.append(" ".join(self._text.split()))
            self._text = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._text is not None:
            self._text += data


def test_the_labels_a_browser_shows_are_drawn_text_never_math_source(built):
    """The real job's page in Chromium: the log-scale loss axis shows its powers of ten, and no label anywhere
    shows matplotlib's math source (`$\\mathdefault{10^{2}}$`, what the page showed with math text off)."""
    page = _Page(browser_dom(built[0]))
    assert set(page.figures) == {f"figure-{name}" for name in built[1]}
    for name, texts in page.figures.items():
        assert texts, name
        assert not [t for t in texts if "mathdefault" in t or "$" in t], (name, texts)
    # "10" and its exponent drawn as math: one glyph each ("1 0 − 4")
    powers = [t.replace(" ", "") for t in page.figures["figure-loss"] if re.fullmatch(r"1 0 (− )?\d", t)]
    assert len(powers) >= 2, page.figures["figure-loss"]


MANY = 50  # classes: past the sizes where a confusion picture can carry names and numbers
INT8_VERDICT = ("int8 model ACCEPTED: valid top-1 0.9000 (fp32 0.9000); int8 top-1 within the allowed drop of fp32's "
                "on 100 validation pictures: +0.00 points lost (0 pictures; at most 0.5 points or one picture); "
                "calibrated on 300 pictures in 20.1 s")


@pytest.fixture(scope="module")
def crafted_page(tmp_path_factory):
    """A job with many classes, one named with a `$`, a log with times and set-up lines, a rules file whose
    not-applicable GPU rule still carries a recommendation (as files written before that was fixed do), and a
    few hyperparameters set."""
    tmp = tmp_path_factory.mktemp("crafted")
    data = tmp / "data"
    data.mkdir()
    classes = ["Dollar$Dog"] + [f"class {i:02d}" for i in range(1, MANY)]
    actual, predicted = [], []
    for index in range(MANY):
        for picture in range(10):
            actual.append(index)
            predicted.append(1 if index == 0 and picture < 6 else index)  # Dollar$Dog: 6 of 10 as class 01
    (data / "test_predictions.json").write_text(json.dumps(
        {"classes": classes, "actual": actual, "predicted": predicted}))
    not_applicable = {"rule": "LowGPUUtilization", "status": "not applicable", "statistic": None, "threshold": 10,
                      "margin": None, "finding": "not applicable on CPU: the job ran without a GPU",
                      "recommendation": "Give the GPU more work per step"}
    triggered = {"rule": "Dataloader", "status": "triggered", "statistic": 0.7, "threshold": 0.5, "margin": 1.4,
                 "finding": "70% of each step waiting for data", "recommendation": "Feed the model faster"}
    passed = {"rule": "Overfit", "status": "passed", "statistic": 0.01, "threshold": 0.1, "margin": 0.1,
              "findings": [], "description": "valid loss rises", "recommendation": "Stop earlier"}
    (data / "rules.json").write_text(json.dumps({"rules": [passed], "profiler_rules": [triggered, not_applicable]}))
    log = ["2026-12-06 10:00:00,012 INFO Hyperparameters: lr=0.01",
           f'2026-12-06 10:00:01,500 INFO Classes: {MANY} ("Dollar$Dog", "class 01", ...); pictures: train 500, '
           "valid 100, test 100",
           "2026-12-06 10:00:02,000 INFO resnet18: 11.2M parameters, 11.2M trainable, on cpu"]
    log += [format_metrics(epoch=e, train_loss=1.0 / e, train_acc=0.3 * e, valid_loss=1.1 / e, valid_acc=0.3 * e)
            for e in (1, 2, 3)]
    log += [format_metrics(test_loss=0.4, test_acc=0.88), "2026-12-06 10:12:30,000 INFO Saved the model to /opt/ml/model",
            f"2026-12-06 10:12:30,100 INFO {INT8_VERDICT}", format_metrics(int8_kept=1, fp32_valid_acc=0.9, int8_valid_acc=0.9)]
    files = report.JobFiles(name="crafted-job", data_dir=data, tensors_dir=None, log_lines=log,
                            hyperparameters={"lr": "0.01", "epochs": "3", "sagemaker_program": "train.py"},
                            instance="this machine (a local job, 1 host)")
    page_path, figures = report.build(files, tmp / "out")
    return page_path, figures, _Page(browser_dom(page_path)), classes


def test_the_header_says_what_the_job_was(crafted_page):
    header = dict(crafted_page[2].tables["job"])
    assert header == {"job": "crafted-job", "date": "2026-12-06 10:00",
                      "dataset": f"{MANY} classes; pictures: train 500, valid 100, test 100",
                      "instance": "this machine (a local job, 1 host)", "device": "cpu", "duration": "12 min 30 s",
                      "final metrics": "test_acc 0.88, test_loss 0.4", "int8 model": INT8_VERDICT}


def test_a_rule_that_cannot_apply_gives_no_advice(crafted_page):
    header, *rows = crafted_page[2].tables["profiler-rules"]
    by_rule = {row[0]: dict(zip(header, row)) for row in rows}
    assert by_rule["LowGPUUtilization"] == {"rule": "LowGPUUtilization", "status": "not applicable", "statistic": "",
                                            "threshold": "", "margin": "",
                                            "finding": "not applicable on CPU: the job ran without a GPU",
                                            "recommendation": ""}
    assert by_rule["Dataloader"]["recommendation"] == "Feed the model faster"
    assert by_rule["Dataloader"]["margin"] == "1.4"
    debugger_header, debugger_row = crafted_page[2].tables["debugger-rules"]
    assert dict(zip(debugger_header, debugger_row))["recommendation"] == "Stop earlier"


def test_many_classes_get_a_most_confused_table_and_a_readable_picture(crafted_page):
    page_path, figures, page, classes = crafted_page
    confused = page.tables["confused"]
    assert confused[0] == ["true", "predicted as", "pictures", "share of the true class"]
    assert confused[1] == ["Dollar$Dog", "class 01", "6", "60%"]  # the `$` shown as written
    assert "Dollar$Dog" in page.figures["figure-per_class_accuracy"]  # the worst class, drawn as written
    assert len([t for t in page.figures["figure-per_class_accuracy"] if t.startswith("class ")]) \
        < report_figures.PER_CLASS_SHOWN
    # the confusion picture: no names on its axes and no numbers in its cells at 50 classes
    drawn = page.figures["figure-confusion"]
    assert not [t for t in drawn if t in classes] and not [t for t in drawn if t in ("6", "4")], drawn
    assert_real_image(figures["confusion"])


def test_a_small_confusion_picture_keeps_its_names_and_counts():
    classes = ["a$b", "c", "d"]
    texts = svg_texts(report_figures.figure_confusion([[2, 1, 0], [0, 3, 0], [1, 0, 2]], classes))
    assert {"a$b", "c", "d"} <= set(texts) and {"2", "1", "3"} <= set(texts)


def test_epochs_tick_at_whole_numbers():
    figure = report_figures.figure_accuracy({"train_acc": [0.2, 0.5, 0.7], "valid_acc": [0.2, 0.4, 0.6]})
    figure.canvas.draw()
    ticks = [t for t in figure.axes[0].get_xticks() if 1 <= t <= 3]
    report_figures.pyplot().close(figure)
    assert ticks == [1, 2, 3]


def test_the_hyperparameter_table_lists_every_value_used_and_marks_the_defaults(crafted_page):
    header, *rows = crafted_page[2].tables["hyperparameters"]
    assert header == ["key", "value", "from"]
    table = {key: (value, source) for key, value, source in rows}
    defaults = Hyperparameters().to_strings()
    assert set(table) == set(defaults) | {"sagemaker_program"}
    assert table["lr"] == ("0.01", "set by the job") and table["epochs"] == ("3", "set by the job")
    assert table["batch-size"] == (defaults["batch-size"], "default")
    assert table["sagemaker_program"] == ("train.py", "platform")
