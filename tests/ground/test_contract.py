"""SageMaker's contract is defined once, in contract.py: the Dockerfile's values equal its values, and no
other module spells the /opt/ml tree, the serving port or the SM_* names in its code."""
import ast
import re

import pytest

from conftest import PROJECT_DIR
from image_classifier import contract
from launcher import ENTRY_SHIM

DOCKERFILE = PROJECT_DIR / "docker" / "Dockerfile"
CONTRACT = PROJECT_DIR / "container_src" / "image_classifier" / "contract.py"
# The /opt/ml tree as a path ("/opt/ml", "/opt/ml/model"), not the words "an /opt/ml-shaped folder".
OPT_ML = re.compile(r"(?<![\w/])/opt/ml(?![\w-])")
SM_NAME = re.compile(r"^SM_[A-Z][A-Z0-9_]*$")
CONTRACT_NAMES = {value for name, value in vars(contract).items() if name.startswith("SM_") and isinstance(value, str)}


def final_stage(text):
    """The Dockerfile's last stage (the image SageMaker runs), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    return joined[joined.rindex("\nFROM "):]


def instructions(stage, keyword):
    return [line.split(None, 1)[1].strip() for line in stage.splitlines() if line.startswith(keyword + " ")]


def test_the_dockerfile_says_what_contract_py_says():
    stage = final_stage(DOCKERFILE.read_text())
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(instructions(stage, "ENV"))))
    assert env[contract.PROGRAM_ENV] == ENTRY_SHIM.name
    assert env[contract.TRAINING_MODULE_ENV] == contract.TRAINING_MODULE
    assert instructions(stage, "EXPOSE") == [str(contract.SERVING_PORT)]
    # The shim the toolkit runs, where it looks for it: /opt/ml/code/$SAGEMAKER_PROGRAM.
    shim = f"{ENTRY_SHIM.relative_to(PROJECT_DIR).as_posix()} {contract.CONTAINER_PATHS.code / ENTRY_SHIM.name}"
    assert shim in instructions(stage, "COPY")
    # SageMaker's stop reaches the whole job: tini forwards SIGTERM to the entry point's process group (-g).
    assert instructions(stage, "ENTRYPOINT") == ['["/usr/bin/tini", "-g", "--", "/usr/local/bin/entrypoint.sh"]']


PRODUCT_FOLDERS = ("container_src", "launcher", "bench", "docker")


def python_modules():
    """Every Python module of the product (the image's package, the launcher, launch.py, the shim, benchmarks):
    the tests are left out, they check the values. Walked, not asked of git, so the same in a copy of the tree
    (scripts/mutation_check.sh runs this in one)."""
    found = [PROJECT_DIR / "launch.py"]
    for folder in PRODUCT_FOLDERS:
        found += [path for path in (PROJECT_DIR / folder).rglob("*.py")
                  if not any(part.startswith(".") or part in ("build", "__pycache__") or part.endswith(".egg-info")
                             for part in path.relative_to(PROJECT_DIR).parts)]
    return [path for path in found if path.is_file() and path != CONTRACT]


def docstrings(tree):
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def contract_spellings(path):
    """(line, what) for each literal in `path`'s code (docstrings and comments aside) that is one of the
    contract's facts: an /opt/ml path, the serving port, an SM_* name."""
    tree = ast.parse(path.read_text(), str(path))
    skip = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in skip:
            continue
        value = node.value
        if isinstance(value, str) and (OPT_ML.search(value) or SM_NAME.match(value) or value in CONTRACT_NAMES
                                       or value == str(contract.SERVING_PORT)):
            found.append((node.lineno, value))
        elif type(value) is int and value == contract.SERVING_PORT:
            found.append((node.lineno, value))
    return found


def test_no_module_but_contract_py_spells_the_contract():
    modules = python_modules()
    assert len(modules) > 20 and PROJECT_DIR / "launch.py" in modules
    spelled = {str(path.relative_to(PROJECT_DIR)): found for path in modules if (found := contract_spellings(path))}
    assert spelled == {}, f"import these from image_classifier.contract instead: {spelled}"


@pytest.mark.parametrize("code", ['PATH = "/opt/ml/model"', 'HOSTS = "SM_HOSTS"', "PORT = 8080",
                                  'URL = f"http://localhost:{8080}/ping"', 'DIR = Path("/opt/ml") / "code"'])
def test_the_scan_finds_a_spelled_out_fact(tmp_path, code):
    module = tmp_path / "module.py"
    module.write_text(f'"""Docstrings may say /opt/ml, 8080 and SM_HOSTS."""\n# so may comments: /opt/ml\n{code}\n')
    assert len(contract_spellings(module)) == 1
