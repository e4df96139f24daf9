"""Text for the terminal from sources the launcher does not control (labels from a model, file and job names,
a server's messages): control characters out, so an ANSI escape sequence cannot recolour, move the cursor,
retitle the window or hide a line."""
import re

# An ANSI escape sequence (CSI `ESC [ ... final`, OSC `ESC ] ... BEL/ST`, or a two-character `ESC x`), then any
# other C0/C1 control character (newline and tab included: a label or a name is one line).
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text):
    """`text` (anything: str() is taken) without escape sequences and control characters."""
    return _CONTROL.sub("", _ESCAPE.sub("", str(text)))
