""".ci/run never lets the serving or container tests skip: without a Java 17 it can install, or a docker engine
it can install and start, it fails before the tests; and the container tests fail instead of skipping when
CI requires them."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
CI_RUN = PROJECT_DIR / ".ci" / "run"
SHELL_TOOLS = ("dirname", "sed", "head", "id", "seq", "df", "tail", "tr", "env", "grep", "sleep", "kill")


def bare_path(tmp_path, fakes=None):
    """A PATH with the shell tools the script needs and `fakes` ({name: script}), but no apt-get, sudo,
    docker, dockerd or make."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in SHELL_TOOLS:
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, script in (fakes or {}).items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def ci_run(tmp_path, path):
    return subprocess.run(["/bin/bash", str(CI_RUN)], capture_output=True, text=True, timeout=60,
                          env={"PATH": path, "HOME": str(tmp_path)})


def test_ci_fails_when_java_cannot_be_installed(tmp_path):
    result = ci_run(tmp_path, bare_path(tmp_path, {"shellcheck": "echo 'version: 0.9.0'"}))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "installing openjdk-17-jre-headless" in result.stdout  # it tried
    assert "FAILING: the serving tests need Java 17" in result.stdout


def test_ci_fails_when_docker_cannot_be_installed(tmp_path):
    fakes = {"java": "echo 'openjdk version \"17.0.13\" 2024-10-15' >&2", "shellcheck": "echo 'version: 0.9.0'"}
    result = ci_run(tmp_path, bare_path(tmp_path, fakes))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "installing docker.io" in result.stdout  # it tried
    assert "FAILING: could not install docker.io" in result.stdout
    assert "SKIPPED" not in result.stdout


def test_container_tests_fail_instead_of_skipping_where_ci_requires_them(tmp_path):
    """No docker CLI on PATH: a developer's run skips the container tests, CI's run fails them."""
    path = bare_path(tmp_path)
    # CI's own run exports the requirement: the developer's run here must not inherit it
    env = {key: value for key, value in os.environ.items() if key != "IMAGE_CLASSIFIER_REQUIRE_DOCKER_TESTS"}
    env["PATH"] = path
    command = [sys.executable, "-m", "pytest", "tests/container/test_container.py", "-q", "-p", "no:cacheprovider", "-k",
               "image_lock"]
    developer = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert developer.returncode == 0 and "1 skipped" in developer.stdout, developer.stdout[-2000:]
    ci = subprocess.run(command, cwd=PROJECT_DIR, env={**env, "IMAGE_CLASSIFIER_REQUIRE_DOCKER_TESTS": "1"},
                        capture_output=True, text=True, timeout=300)
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout[-2000:]
    assert "container tests cannot run" in ci.stdout and "docker CLI is not installed" in ci.stdout


def _mutation_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutation_script", PROJECT_DIR / "scripts" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_mutation_step_plans_the_functions_a_change_touched(tmp_path, monkeypatch):
    """scripts/mutation.py ci, as .ci/run calls it before `make test` (its failure comes in minutes): a function
    changed runs that function's mutants; a module's tests or module-level code changed runs all of them; other
    files run nothing."""
    mutation = _mutation_script()
    assert CI_RUN.read_text().index("scripts/mutation.py ci") < CI_RUN.read_text().index("make test\n")
    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,  # noqa: E731
                                       text=True).stdout.strip()
    git("init", "-q")
    for module in ("serving.workers", "picture_containers", "launcher.api_rules"):
        module_file, tests = mutation.MODULES[module]
        for path in (module_file, *tests):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text((PROJECT_DIR / path).read_text())
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    base = git("rev-parse", "HEAD")
    monkeypatch.setattr(mutation, "PROJECT_DIR", tmp_path)
    assert mutation.touched(base) == {}

    workers = tmp_path / mutation.MODULES["serving.workers"][0]
    workers.write_text(workers.read_text().replace("self.deadline = now + self.limit", "self.deadline = now"))
    containers = tmp_path / mutation.MODULES["picture_containers"][0]
    containers.write_text(containers.read_text().replace("MAX_JPEG_SCANS = 32", "MAX_JPEG_SCANS = 64"))
    rules_tests = tmp_path / "tests/launcher/test_api_rules.py"
    rules_tests.write_text(rules_tests.read_text().replace("    assert api_rules.inference_ami(instance_type) == ami\n",
                                                           "    api_rules.inference_ami(instance_type)\n"))
    assert mutation.touched(base) == {"serving.workers": {"xǁWorkerWatchǁupdate"}, "picture_containers": None,
                                      "launcher.api_rules": None, "launcher.request_checks": None}


def test_the_mutation_step_compares_with_the_commit_that_recorded_the_scores(tmp_path, monkeypatch):
    """On a clean clone of main (CI), main is the tree itself: the step compares with the commit that last
    wrote docs/mutation/scores.json, so what changed since the scores were recorded is what it runs."""
    mutation = _mutation_script()
    git = lambda *args: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,  # noqa: E731
                                       check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q", "-b", "main")
    scores = tmp_path / "docs" / "mutation" / "scores.json"
    scores.parent.mkdir(parents=True)
    scores.write_text("{}\n")
    git("add", "-A")
    git("commit", "-qm", "scores recorded")
    recorded = git("rev-parse", "HEAD")
    (tmp_path / "change.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "a change after them")
    monkeypatch.setattr(mutation, "PROJECT_DIR", tmp_path)
    monkeypatch.setattr(mutation, "SCORES_FILE", scores)
    monkeypatch.delenv("MUTATION_BASE", raising=False)
    assert mutation.merge_base(None) == recorded != git("rev-parse", "main")


def test_a_timeout_counts_as_found_only_if_its_tests_fail_or_never_end_without_mutmut_s_cpu_limit(tmp_path,
                                                                                                  monkeypatch):
    """mutmut's CPU limit also stops mutants whose fixtures were slow or whose forked process deadlocked (torch,
    OpenVINO): each "timeout" runs its tests again in a fresh process, as the mutant, without that limit."""
    mutation = _mutation_script()
    mutants = tmp_path / "mutants"
    (mutants / "src").mkdir(parents=True)
    (mutants / "test_mutant.py").write_text(
        "import os, signal, time\n\n"
        "def test_it():\n"
        "    mutant = os.environ['MUTANT_UNDER_TEST']\n"
        "    assert not mutant.startswith('m.x_fails')\n"
        "    if mutant.startswith('m.x_crashes'):\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    while mutant.startswith('m.x_hangs'):\n"
        "        time.sleep(0.1)\n")
    (mutants / "mutmut-stats.json").write_text(json.dumps({"tests_by_mangled_function_name": {
        f"m.x_{name}": ["test_mutant.py::test_it"] for name in ("fails", "crashes", "hangs", "passes", "killed")}}))
    monkeypatch.setattr(mutation, "CONFIRM_SECONDS", 5)
    monkeypatch.setenv("PY", sys.executable)
    statuses = {"m.x_fails__mutmut_1": "timeout", "m.x_crashes__mutmut_1": "timeout", "m.x_hangs__mutmut_1": "timeout",
                "m.x_passes__mutmut_1": "timeout", "m.x_killed__mutmut_1": "killed"}
    log = io.StringIO()
    mutation.confirm_timeouts(tmp_path, statuses, dict(os.environ), None, log)
    assert statuses == {"m.x_fails__mutmut_1": "timeout", "m.x_crashes__mutmut_1": "timeout",
                        "m.x_hangs__mutmut_1": "timeout", "m.x_passes__mutmut_1": "survived",
                        "m.x_killed__mutmut_1": "killed"}
    assert log.getvalue().splitlines()[-1] == \
        "    4 timeouts run again without the CPU limit: 2 failed their tests or crashed, 1 ran past 5 s"


def test_a_rerun_of_some_functions_replaces_only_their_results():
    mutation = _mutation_script()
    recorded = {"killed": 7, "total": 9, "score": 77.8, "timeouts": 0, "functions": {"x_a": [4, 5], "x_b": [3, 4]},
                "survivors": ["m.x_a__mutmut_2 (survived)", "m.x_b__mutmut_1 (survived)"]}
    statuses = {"m.x_a__mutmut_1": "killed", "m.x_a__mutmut_2": "killed", "m.x_a__mutmut_3": "timeout",
                "m.x_a__mutmut_4": "survived", "m.x_a__mutmut_5": "killed"}
    assert mutation.merged(recorded, {"x_a"}, mutation.summary(statuses)) == {
        "killed": 7, "total": 9, "score": 77.8, "timeouts": 1, "functions": {"x_a": [4, 5], "x_b": [3, 4]},
        "survivors": ["m.x_a__mutmut_4 (survived)", "m.x_b__mutmut_1 (survived)"]}
    statuses["m.x_a__mutmut_4"] = "killed"
    assert mutation.merged(recorded, {"x_a"}, mutation.summary(statuses))["survivors"] == ["m.x_b__mutmut_1 (survived)"]
    with pytest.raises(SystemExit, match="timeouts"):  # the recorded run's timeouts cannot be put to a function
        mutation.merged({**recorded, "timeouts": 1}, {"x_a"}, mutation.summary(statuses))
