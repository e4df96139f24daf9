#!/usr/bin/env python3
"""The layout's rules (docs/ARCHITECTURE.md), checked from the source alone: exits 1 and names each break.

- The ground (the modules at the top of container_src/image_classifier/) imports no subpackage.
- serving/, training/ and diagnostics/ import each other only along the arrows: training -> diagnostics;
  serving imports neither.
- The image's code never imports the launcher; the launcher imports from the image's package only the ground
  and the few subpackage modules that define a fact both sides use (LAUNCHER_MAY_IMPORT).
- No import cycle among the modules of container_src/ and launcher/ (module-level and function-level imports).
- No module outside tests/ over MAX_MODULE_LINES lines, no test module over MAX_TEST_LINES.

    python scripts/check_layout.py [PROJECT_DIR]
"""
import ast
import os
import sys
from pathlib import Path

PACKAGE = "image_classifier"
SUBPACKAGES = ("training", "diagnostics", "serving")
# subpackage -> the subpackages it may import (the arrows of docs/ARCHITECTURE.md)
ALLOWED_ARROWS = {"training": {"diagnostics"}, "diagnostics": set(), "serving": set()}
# What the launcher may take from inside a subpackage: torch-free modules that define a shared fact once.
LAUNCHER_MAY_IMPORT = {"training.hyperparameters",  # the hyperparameter table, checked before any job starts
                       "training.layout",           # the data-layout rules, checked on a local folder before a job
                       "serving.settings"}          # the serving defaults and the environment names that set them
MAX_MODULE_LINES, MAX_TEST_LINES = 500, 600
# Folders that hold no project code: environments, build and job outputs (hidden folders are skipped too).
NOT_CODE = {"build", "local_jobs", "reports", "data", "__pycache__"}


def modules_under(folder, top):
    """{dotted name: path} of the Python modules under `folder`, named from `top` (a folder on sys.path)."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(top).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported_names(name, path):
    """Every name `name` (at `path`) imports, anywhere in the file, relative imports resolved: `import a.b` gives
    a.b, `from a import b` gives a.b (a module, or an attribute of a)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield from (f"{module}.{alias.name}" for alias in node.names)


def import_graph(project):
    """{module: {modules it imports}} over container_src/ and launcher/ (plus launch.py), within those only."""
    mods = {**modules_under(project / "container_src" / PACKAGE, project / "container_src"),
            **modules_under(project / "launcher", project)}
    if (project / "launch.py").is_file():
        mods["launch"] = project / "launch.py"
    graph = {}
    for name, path in mods.items():
        targets = set()
        for target in imported_names(name, path):
            while target and target not in mods:  # `package.module.attribute` -> the module that defines it
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # not a package's own __init__
                targets.add(target)
        graph[name] = targets
    return graph


def part_of(module):
    """'ground', a subpackage's name, 'launcher' or 'launch'."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return parts[0]
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in SUBPACKAGES) else "ground"


def arrow_breaks(graph):
    breaks = []
    for module, targets in sorted(graph.items()):
        source = part_of(module)
        for target in sorted(targets):
            dest = part_of(target)
            inner = target.split(".", 1)[1] if target.startswith(PACKAGE + ".") else ""
            if source == "ground" and dest in SUBPACKAGES:
                breaks.append(f"{module} imports {target}: the ground imports no subpackage")
            elif source in SUBPACKAGES and dest in SUBPACKAGES and dest != source \
                    and dest not in ALLOWED_ARROWS[source]:
                breaks.append(f"{module} imports {target}: {source}/ never imports {dest}/")
            elif source in ("ground", *SUBPACKAGES) and dest in ("launcher", "launch"):
                breaks.append(f"{module} imports {target}: the image's code never imports the launcher")
            elif source in ("launcher", "launch") and dest in SUBPACKAGES and inner not in LAUNCHER_MAY_IMPORT:
                breaks.append(f"{module} imports {target}: the launcher takes from the image's subpackages only "
                              f"{', '.join(sorted(LAUNCHER_MAY_IMPORT))} (the rest talks through the contract)")
    return breaks


def cycles(graph):
    """One line per import cycle found (depth-first, each cycle once by its set of modules)."""
    found, seen_sets = [], set()
    state = {}  # module -> 1 on the stack, 2 done

    def visit(module, stack):
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                loop = stack[stack.index(target):]
                if frozenset(loop) not in seen_sets:
                    seen_sets.add(frozenset(loop))
                    found.append("import cycle: " + " -> ".join(loop + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return found


def python_files(project):
    """The project's Python files, relative to it, without environments and outputs."""
    for folder, subfolders, files in os.walk(project):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in NOT_CODE)
        for name in sorted(files):
            if name.endswith(".py"):
                yield (Path(folder) / name).relative_to(project).as_posix()


def size_breaks(project):
    """Modules over their limit: MAX_TEST_LINES under tests/, MAX_MODULE_LINES elsewhere."""
    breaks = []
    for rel in python_files(project):
        limit = MAX_TEST_LINES if rel.startswith("tests/") else MAX_MODULE_LINES
        lines = len((project / rel).read_text(encoding="utf-8").splitlines())
        if lines > limit:
            breaks.append(f"{rel}: {lines} lines, over {limit} (split it, or say in its docstring why it is whole)")
    return breaks


def violations(project):
    project = Path(project)
    graph = import_graph(project)
    return arrow_breaks(graph) + cycles(graph) + size_breaks(project)


def main(argv):
    project = Path(argv[0] if argv else Path(__file__).resolve().parent.parent)
    found = violations(project)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
