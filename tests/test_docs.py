"""README and docs/: every relative link resolves (file and heading), every `python launch.py ...` command shown
parses with the current command line, and the README stays short (the depth lives in docs/)."""
import contextlib
import io
import re
import shlex

import pytest

from conftest import PROJECT_DIR
from launcher.cli import build_parser

README_MAX_BYTES = 15 * 1024
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`(python launch\.py [^`]+)`")


def pages():
    return [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]


def slug(heading):
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(path):
    """The relative links of one page that lead nowhere: a missing file, or a heading the target lacks."""
    found = []
    for target in LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            found.append(f"{path.name}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            found.append(f"{path.name}: {target} (no heading #{anchor} in {linked.name})")
    return found


def launch_commands(path):
    """Every `python launch.py ...` command a page shows: in code blocks (continuation lines joined, comments
    dropped) and in inline code."""
    text = path.read_text(encoding="utf-8")
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("python launch.py "):
                commands.append(line)
    commands += INLINE_CODE.findall(FENCE.sub("", text))
    return commands


def parse_error(command):
    """None when the CLI parses the command, else what argparse said."""
    argv = shlex.split(command, comments=True)[2:]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as stop:
        return None if stop.code == 0 else stderr.getvalue().strip().splitlines()[-1]
    return None


def test_every_relative_link_resolves():
    assert [line for page in pages() for line in broken_links(page)] == []


def test_every_launch_command_shown_parses():
    commands = [(page.name, command) for page in pages() for command in launch_commands(page)]
    assert len(commands) >= 25  # the pages do show the CLI: the check is not vacuous
    assert [(page, command, error) for page, command in commands if (error := parse_error(command))] == []


def test_the_readme_is_short_and_links_every_page():
    readme = PROJECT_DIR / "README.md"
    assert readme.stat().st_size <= README_MAX_BYTES
    linked = {target.partition("#")[0] for target in LINK.findall(readme.read_text(encoding="utf-8"))}
    assert {f"docs/{page.name}" for page in (PROJECT_DIR / "docs").glob("*.md")} <= linked


def test_the_checks_catch_a_broken_link_and_a_stale_command(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "OTHER.md").write_text("# Other\n\n## Real heading\n")
    page = tmp_path / "README.md"
    page.write_text("# Top\n\n[ok](docs/OTHER.md#real-heading) [file](docs/GONE.md) [anchor](docs/OTHER.md#gone) "
                    "[here](#top) [away](https://example.com/x)\n\n```bash\npython launch.py train --local \\\n"
                    "    --no-such-flag  # a comment\npython launch.py predict --local dog.jpg\n```\n"
                    "and `python launch.py tune --max-jobs two`.\n")
    assert broken_links(page) == ["README.md: docs/GONE.md (no such file)",
                                  "README.md: docs/OTHER.md#gone (no heading #gone in OTHER.md)"]
    commands = launch_commands(page)
    assert commands == ["python launch.py train --local      --no-such-flag  # a comment",
                        "python launch.py predict --local dog.jpg", "python launch.py tune --max-jobs two"]
    errors = [parse_error(command) for command in commands]
    assert "unrecognized arguments: --no-such-flag" in errors[0]
    assert errors[1] is None
    assert "invalid" in errors[2]


@pytest.mark.parametrize("heading, anchor", [("The SageMaker SDK v2's lifecycle", "the-sagemaker-sdk-v2s-lifecycle"),
                                             ("Dry run: see the API calls, send nothing",
                                              "dry-run-see-the-api-calls-send-nothing"),
                                             ("`deploy` options", "deploy-options")])
def test_anchors_are_githubs(heading, anchor):
    assert slug(heading) == anchor


def test_the_readme_shows_every_sdk_difference_of_the_code_table():
    from launcher.sdk_differences import REQUEST_DIFFERENCES

    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme[readme.index("**SDK v2 or v3.**"):]
    rows = [line for line in section.splitlines() if line.startswith("| Create") or line.startswith("| Describe")]
    assert len(rows) == len(REQUEST_DIFFERENCES)
    for (operation, field, _, _), row in zip(REQUEST_DIFFERENCES, rows):
        assert row.startswith(f"| {operation} |") and field.rsplit(".", 1)[-1] in row, (operation, field)
