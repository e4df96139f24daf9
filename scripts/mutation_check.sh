#!/usr/bin/env bash
# Break each property the project claims, one at a time, and check that its tests notice: the mutations mutmut
# does not make (scripts/mutation.py runs mutmut over the safety-critical modules: every operator, comparison,
# constant, argument and return there): modules outside its list, a statement removed, one name put for
# another, code added, and the shell, Dockerfile and docker ones. Every mutation below
# is a small exact text replacement, made in a temporary copy of this tree (never in the tree itself), and
# the mutation's named tests run against that copy (the shared interpreter, PYTHONPATH pointing at the copy),
# first unmutated (they must pass, or their failure would prove nothing), then mutated.
# A mutation its tests still pass is "survived" and fails this script; so does one whose text is no longer
# found exactly once (the code moved: update the table). Prints mutation -> tests -> caught/survived.
#
# Usage: scripts/mutation_check.sh [NAME...]     (no NAME: every mutation)
#        scripts/mutation_check.sh --list
# Env:   PY             the interpreter (default .venv/bin/python)
#        MUTATION_DOCKER=1  also the mutations whose tests need the image (each builds a mutated image once;
#                           the current content-hashed image is kept under a spare tag meanwhile)
# About 7 minutes on a quiet 2-core machine without the docker mutation (.ci/run runs it); with it, before
# each release (docs/TESTING.md).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
py=${PY:-.venv/bin/python}
[[ $py == /* ]] || py=$PWD/$py
copy=$(mktemp -d "${TMPDIR:-/tmp}/mutation-check.XXXXXX")
trap 'rm -rf "$copy"' EXIT

# The tree as git sees it (tracked and untracked files, not ignored ones: no .venv, data or jobs).
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do [[ -e $file ]] && printf '%s\0' "$file"; done |
    tar --null -T - -cf - | tar -xf - -C "$copy" || exit 1

"$py" - "$copy" "$@" <<'PYTHON'
import os
import subprocess
import sys
import time
from pathlib import Path

COPY, ARGS = Path(sys.argv[1]), sys.argv[2:]
PKG = "container_src/image_classifier"

# name -> (property, file, old text, new text, tests, needs docker)
MUTATIONS = {
    "dp-resume-sums": (
        "a resumed data-parallel epoch counts each picture once",
        f"{PKG}/training/checkpoints.py", '"debugger": job.recorder.position(), "state": state,',
        '"debugger": job.recorder.position(), "state": job.state,',
        ["tests/training/test_distributed.py::test_a_stop_inside_epoch_2_resumes_with_both_ranks_sums"], False),
    "atomic-write-fixed-temp": (
        "atomic_write's temporary files are unique",
        f"{PKG}/contract.py", '    tmp = _create_unique(path.parent, f".{path.name}.", ".tmp")\n',
        '    tmp = path.with_name(f".{path.name}.tmp")\n',
        ["tests/ground/test_model.py::test_two_concurrent_atomic_writes_to_one_path_use_their_own_temporary_files"], False),
    "s3-prefix-without-slash": (
        "upload --delete touches only the data set's own prefix",
        "launcher/s3_upload.py", 'paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")',
        "paginate(Bucket=bucket, Prefix=prefix)",
        ["tests/launcher/test_aws_jobs.py::test_upload_delete_leaves_a_sibling_dataset_alone"], False),
    "entrypoint-no-grace": (
        "a stopped container saves its checkpoint and resumes bit for bit",
        "docker/entrypoint.sh", "grace=${STOP_GRACE_SECONDS:-110}", "grace=0",
        ["tests/container/test_container.py::test_docker_stop_then_restart_on_the_same_opt_ml_resumes_bit_for_bit"], True),
    "dockerfile-port-drift": (
        "contract facts are defined once (the Dockerfile agrees with contract.py)",
        "docker/Dockerfile", "EXPOSE 8080", "EXPOSE 8081",
        ["tests/ground/test_contract.py"], False),
    "module-spells-opt-ml": (
        "contract facts are defined once (no module spells /opt/ml)",
        "launcher/local/docker.py", 'f"{model_dir}:{CONTAINER_PATHS.model}:ro"', 'f"{model_dir}:/opt/ml/model:ro"',
        ["tests/ground/test_contract.py"], False),
    "delete-keeps-endpoint-config": (
        "delete leaves nothing that costs money",
        "launcher/endpoints.py", "    client.delete_endpoint_config(EndpointConfigName=config_name)\n", "",
        ["tests/launcher/test_aws_endpoints.py::test_delete_after_a_refused_second_deploy_leaves_nothing"], False),
    "verdict-depends-on-simd": (
        "rule verdicts hold on any x86 CPU (no SIMD too)",
        f"{PKG}/diagnostics/debugger_rules.py", "decrease = 1 - last / first if",
        'decrease = (1 - last / first) * (__import__("torch").backends.cpu.get_cpu_capability() != "DEFAULT") if',
        ["tests/diagnostics/test_debugger_rules.py::test_margins_hold_on_other_cpu_kernels"], False),
    "ci-skips-docker": (
        "CI never skips the container tests",
        ".ci/run", '    install_missing || fail "could not install', '    install_missing || return 0 # "',
        ["tests/test_ci_run.py"], False),
    "pixel-budget-off": (
        "a request's pictures may decode to at most the pixel budget",
        f"{PKG}/serving/handler.py", "    if total > budget:\n", "    if total > budget * 1000:\n",
        ["tests/serving/test_serving_handler.py", "-k", "budget"], False),
    "cores-never-shared": (
        "a request runs on its share of the cores while other workers are busy",
        f"{PKG}/serving/handler.py", "yield model.forward if alone else model.narrow_forward", "yield model.forward",
        ["tests/serving/test_core_share.py"], False),
    "openvino-signal-stack": (
        "OpenVINO models freed in any order leave the process able to take a signal",
        f"{PKG}/serving/engine.py", "        libc.sigaltstack(ctypes.byref(saved), None)\n", "        pass\n",
        ["tests/serving/test_engine.py::test_models_freed_in_any_order_leave_a_signal_stack_that_exists"], False),
    "pickles-loaded": (
        "pickles that ask for code are refused",
        f"{PKG}/model.py", 'torch.load(path, map_location="cpu", weights_only=True)',
        'torch.load(path, map_location="cpu", weights_only=False)',
        ["tests/training/test_training_faults.py", "-k", "pickle"], False),
    "metric-lines-forgeable": (
        "class names and paths cannot forge metric lines",
        f"{PKG}/metrics.py", '    return json.dumps(str(text)).replace("=", "\\\\u003d")\n', "    return str(text)\n",
        ["tests/training/test_training_faults.py::test_class_names_and_paths_cannot_forge_metric_lines"], False),
    "resume-forgets-optimizer": (
        "a stopped and resumed job ends bit for bit like an uninterrupted one",
        f"{PKG}/training/checkpoints.py", '    job.optimizer.load_state_dict(saved["optimizer"])\n', "",
        ["tests/training/test_training_faults.py::"
         "test_stop_inside_an_epoch_then_resume_ends_bit_for_bit_like_an_uninterrupted_run"], False),
}

if ARGS == ["--list"]:
    for name, (claim, path, *_rest) in MUTATIONS.items():
        print(f"{name:30} {path:45} {claim}")
    sys.exit(0)
unknown = sorted(set(ARGS) - set(MUTATIONS))
if unknown:
    sys.exit(f"unknown mutation(s) {unknown}; --list shows them")
docker = os.environ.get("MUTATION_DOCKER") == "1"
chosen = [n for n in (ARGS or MUTATIONS) if docker or ARGS or not MUTATIONS[n][5]]
skipped = [] if ARGS else [n for n in MUTATIONS if n not in chosen]

env = {**os.environ, "PYTHONPATH": f"{COPY / 'container_src'}{os.pathsep}{COPY}", "PYTHONDONTWRITEBYTECODE": "1"}
env.pop("IMAGE_CLASSIFIER_REQUIRE_DOCKER_TESTS", None)


def docker_tag_of_copy():
    return subprocess.run([sys.executable, "-c", "from launcher import docker_image as d; "
                           "print(d.cached_tag(d.default_build_args()))"], cwd=COPY, env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


rows, failed = [], False
for name in chosen:
    claim, relative, old, new, tests, needs_docker = MUTATIONS[name]
    path = COPY / relative
    original = path.read_text()
    if original.count(old) != 1:
        rows.append((name, " ".join(tests), f"ERROR: text found {original.count(old)} times in {relative}", 0))
        failed = True
        continue
    spare = None
    if needs_docker:  # the fixture untags other content-hashed images: keep this tree's under a spare tag
        path.write_text(original)
        current = docker_tag_of_copy()
        if subprocess.run(["docker", "image", "inspect", current], capture_output=True).returncode == 0:
            spare = current.replace(":src-", ":mutation-check-keep-")
            subprocess.run(["docker", "tag", current, spare], check=True)
    started = time.monotonic()
    print(f"--- {name}: {claim} ({relative})", flush=True)
    pytest = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    if not needs_docker:  # the tests must pass unmutated, or a failure below proves nothing (the docker
        # mutation's test runs unmutated in every `make test`)
        baseline = subprocess.run(pytest, cwd=COPY, env=env, capture_output=True, text=True)
        if baseline.returncode != 0:
            summary = (baseline.stdout.strip().splitlines() or ["(no output)"])[-1]
            print(baseline.stdout[-3000:] + baseline.stderr[-2000:])
            rows.append((name, " ".join(tests), f"ERROR: fails unmutated: {summary}", time.monotonic() - started))
            failed = True
            continue
    path.write_text(original.replace(old, new))
    mutated_tag = docker_tag_of_copy() if needs_docker else None
    result = subprocess.run(pytest, cwd=COPY, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    path.write_text(original)
    if needs_docker:
        subprocess.run(["docker", "rmi", mutated_tag], capture_output=True)
        if spare:
            subprocess.run(["docker", "tag", spare, current], check=True)
            subprocess.run(["docker", "rmi", spare], capture_output=True)
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(summary, flush=True)
    for line in [line for line in result.stdout.splitlines() if line.startswith("E ")][:3]:
        print(f"    {line[:200]}")  # why the tests failed: the broken property, not a broken test
    if result.returncode == 1:  # tests ran and failed: the mutation was noticed
        caught = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        rows.append((name, ", ".join(caught) or " ".join(tests), "caught", seconds))
    elif result.returncode == 0:
        rows.append((name, " ".join(tests), "SURVIVED", seconds))
        failed = True
    else:  # collection error, no test selected, interrupted: no verdict
        rows.append((name, " ".join(tests), f"ERROR: pytest exit {result.returncode}: {summary}", seconds))
        print(result.stdout[-3000:] + result.stderr[-2000:])
        failed = True

print()
print(f"{'mutation':30} {'result':9} {'seconds':>7}  tests (the failing ones where caught)")
for name, tests, verdict, seconds in rows:
    print(f"{name:30} {verdict:9} {seconds:7.0f}  {tests}")
for name in skipped:
    print(f"{name:30} {'not run':9} {'':>7}  needs the image: MUTATION_DOCKER=1")
sys.exit(1 if failed else 0)
PYTHON
