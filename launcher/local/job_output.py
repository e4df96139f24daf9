"""What a local training job shows on the terminal: everything with --verbose; by default only what a user reads.

The job's whole output always goes to its log file (processes.stream). Quiet, the terminal gets the job's
progress lines, a short line per epoch (from its metric line, whose format metrics.py owns), the test result,
and the job's own warnings and errors; the toolkit's environment dump, its INFO lines, library warnings and
the rule metric lines stay in the log. On a terminal, progress lines overwrite each other; elsewhere (a pipe,
a CI log) each is a plain line.
"""
import re
import sys

from image_classifier.constants import CORE_TAKEN_FROM, PROGRESS_PREFIX
from image_classifier.metrics import parse_metrics

# The job's own log lines (job.py's format: time, level, message); the toolkit's carry its logger's name.
_JOB_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR|CRITICAL) (.*)$")
_SHOWN_INFO = ("Preset: ", "Classes: ")  # the job's INFO lines worth a user's screen


def summary_of(line):
    """The line to show for one line of the job's output, or None to keep it in the log only."""
    if line.startswith(PROGRESS_PREFIX):
        return line
    logged = _JOB_LOG_LINE.match(line)
    if logged:
        level, message = logged.groups()
        return message if level != "INFO" or message.startswith(_SHOWN_INFO) else None
    metrics = {name: values[-1] for name, values in parse_metrics([line]).items()}
    if "epoch" in metrics and "valid_acc" in metrics:
        busy = metrics.get("cpu_taken_elsewhere", 0.0)
        return (f"epoch {metrics['epoch']:g}: train accuracy {metrics['train_acc']:.1%}, valid accuracy "
                f"{metrics['valid_acc']:.1%} (loss {metrics['valid_loss']:.3f}), {metrics['images_per_sec']:.1f} images/s"
                + (f" (other processes kept {busy:.1f} cores busy)" if busy >= CORE_TAKEN_FROM else ""))
    if "test_acc" in metrics:
        return f"test accuracy {metrics['test_acc']:.1%} (loss {metrics['test_loss']:.3f})"
    return None


class Display:
    """Writes a job's output lines (bytes) to `out`: all of them (`verbose`), or their summaries."""

    def __init__(self, verbose=False, out=None):
        self.verbose, self.out = verbose, out or sys.stdout
        self.overwriting = False  # a progress line is on the terminal's last line, without its newline

    def __call__(self, raw):
        if self.verbose:
            self.out.buffer.write(raw) if hasattr(self.out, "buffer") else self.out.write(raw.decode(errors="replace"))
            self.out.flush()
            return
        shown = summary_of(raw.decode(errors="replace").rstrip("\r\n"))
        if shown is None:
            return
        progress = shown.startswith(PROGRESS_PREFIX)
        if progress and self.out.isatty():
            self.out.write(f"\r{shown}\x1b[K")
            self.overwriting = True
        else:
            self.out.write(("\n" if self.overwriting else "") + shown + "\n")
            self.overwriting = False
        self.out.flush()

    def close(self):
        if self.overwriting:
            self.out.write("\n")
            self.overwriting = False
