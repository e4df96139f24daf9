"""The layout's rules (docs/ARCHITECTURE.md, scripts/check_layout.py): the tree keeps them, and the check
catches each kind of break in a small tree made to break it."""
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR

sys.path.insert(0, str(PROJECT_DIR / "scripts"))
import check_layout  # noqa: E402

CHECK = PROJECT_DIR / "scripts" / "check_layout.py"

# A tree that keeps every rule: the same shape as the project, one module in each part.
CLEAN_TREE = {
    "container_src/image_classifier/__init__.py": "",
    "container_src/image_classifier/contract.py": "PORT = 8080\n",
    "container_src/image_classifier/model.py": "from . import contract\n",
    "container_src/image_classifier/training/__init__.py": "",
    "container_src/image_classifier/training/hyperparameters.py": "from .. import contract\n",
    "container_src/image_classifier/training/job.py": "from ..diagnostics import rules\nfrom .. import model\n",
    "container_src/image_classifier/diagnostics/__init__.py": "",
    "container_src/image_classifier/diagnostics/rules.py": "from ..contract import PORT\n",
    "container_src/image_classifier/serving/__init__.py": "",
    "container_src/image_classifier/serving/settings.py": "from .. import contract\n",
    "container_src/image_classifier/serving/handler.py": "from . import settings\nfrom ..model import contract\n",
    "launcher/__init__.py": "",
    "launcher/cli.py": "from image_classifier.training.hyperparameters import contract\n",
    "launcher/local/__init__.py": "from image_classifier.serving import settings\nfrom .. import cli\n",
    "launch.py": "from launcher import cli\nfrom image_classifier.contract import PORT\n",
    "tests/test_x.py": "def test_x():\n    pass\n",
}

# break -> (file, what to append to it, the words the check must say)
BREAKS = {
    "ground imports a subpackage": (
        "container_src/image_classifier/model.py", "from .training import hyperparameters\n",
        "the ground imports no subpackage"),
    "ground imports a subpackage inside a function": (
        "container_src/image_classifier/model.py", "def f():\n    from .diagnostics import rules\n",
        "the ground imports no subpackage"),
    "serving imports training": (
        "container_src/image_classifier/serving/handler.py", "from ..training.hyperparameters import contract\n",
        "serving/ never imports training/"),
    "training imports serving": (
        "container_src/image_classifier/training/job.py", "from image_classifier.serving import settings\n",
        "training/ never imports serving/"),
    "diagnostics imports training": (
        "container_src/image_classifier/diagnostics/rules.py", "from ..training import hyperparameters\n",
        "diagnostics/ never imports training/"),
    "the image imports the launcher": (
        "container_src/image_classifier/serving/settings.py", "import launcher.cli\n",
        "the image's code never imports the launcher"),
    "the launcher imports training internals": (
        "launcher/cli.py", "from image_classifier.training import job\n", "the launcher takes from the image's"),
    "an import cycle": (
        "launcher/cli.py", "def f():\n    from .local import settings\n", "import cycle: launcher.cli -> launcher.local"),
    "a module over 500 lines": (
        "launcher/cli.py", "x = 1\n" * 500, "launcher/cli.py: 501 lines, over 500"),
    "a test module over 600 lines": (
        "tests/test_x.py", "x = 1\n" * 599, "tests/test_x.py: 601 lines, over 600"),
}


def make_tree(root, extra=None):
    for rel, text in CLEAN_TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if extra:
        rel, text = extra
        with open(root / rel, "a") as file:
            file.write(text)
    return root


def test_the_project_keeps_the_layout_rules():
    assert check_layout.violations(PROJECT_DIR) == []
    # and the check sees the real packages: it would not pass by reading nothing
    graph = check_layout.import_graph(PROJECT_DIR)
    assert "image_classifier.diagnostics.debugger_rules" in graph["image_classifier.training.job"]
    assert "image_classifier.serving.engine" in graph["image_classifier.serving.handler"]
    assert "launcher.aws" in graph["launch"]


def test_a_tree_that_keeps_the_rules_passes(tmp_path):
    assert check_layout.violations(make_tree(tmp_path)) == []


@pytest.mark.parametrize("name", BREAKS)
def test_each_break_is_named(tmp_path, name):
    rel, text, words = BREAKS[name]
    found = check_layout.violations(make_tree(tmp_path, (rel, text)))
    assert len(found) == 1 and words in found[0], found


def test_the_script_exits_non_zero_on_a_break(tmp_path):
    make_tree(tmp_path, BREAKS["serving imports training"][:2])
    result = subprocess.run([sys.executable, str(CHECK), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "serving/ never imports training/" in result.stdout
    clean = subprocess.run([sys.executable, str(CHECK), str(make_tree(tmp_path / "clean"))], capture_output=True,
                           text=True, timeout=60)
    assert clean.returncode == 0 and clean.stdout == ""
