"""A new user's first run on their own pictures (issue 29): checks before a job starts, job names, presets, the
quiet output with progress and summary, the local jobs' list and clean-up, --version."""
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time

import psutil
import pytest

import launch
from conftest import PROJECT_DIR, TINY_HYPERPARAMETERS, make_dataset, require_container_packages, write_picture

require_container_packages()  # before the imports below, which need torch
from image_classifier.metrics import parse_metrics
from image_classifier.training.loop import ProgressLine
from launcher.local import jobs, job_output, process, serving

TINY = {"train": 2, "valid": 1, "test": 1}


def run_launch(capsys, *argv):
    """launch.main in this process: (exit code, stdout, stderr, seconds)."""
    started = time.perf_counter()
    code = launch.main([str(a) for a in argv])
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    return code, out, err, seconds


def tiny_hp(**extra):
    return [arg for key, value in {**TINY_HYPERPARAMETERS, **extra}.items() for arg in ("--hp", f"{key}={value}")]


def no_empty_class(root):
    (root / "train" / "004.Empty").mkdir()


def missing_valid(root):
    import shutil
    shutil.rmtree(root / "valid")


def renamed_test_class(root):
    (root / "test" / "003.Blue_whale").rename(root / "test" / "003.Blue_wale")


def broken_picture(root):
    (root / "train" / "002.Green_frog" / "broken.jpg").write_bytes(b"not a jpeg")


BAD_INPUTS = {  # id: (change to the dataset, extra arguments, the message's expected words)
    "unknown key": (None, ["--hp", "epoch=3"], r"Unknown hyperparameter 'epoch'\. Did you mean 'epochs'\?"),
    "bad value": (None, ["--hp", "lr=fast"], r"'lr' = 'fast' is not valid: expected a number"),
    "contradiction": (None, ["--hp", "momentum=0.5"], r"momentum=0.5 applies to optimizer=sgd only"),
    "no such folder": ("gone", [], r"--data \S+: no such folder\. Give a folder with train/, valid/ and test/"),
    "no valid folder": (missing_valid, [], r"needs a valid/ folder beside train/ \(the dogImages layout"),
    "empty class": (no_empty_class, [], r"Class folders with no pictures in 'train': \"004\.Empty\"\. Add pictures"),
    "classes differ": (renamed_test_class, [], r"'test' classes do not match 'train': missing \[\"003\.Blue_whale\"\]"),
    "unreadable picture": (broken_picture, ["--hp", "on-bad-image=fail"], r"unreadable picture\(s\) in 'train'.*broken\.jpg"),
    "no weights": (None, ["--hp", "pretrained=true"],
                   r"pretrained=true needs the ImageNet weights of resnet18.*--pretrained-weights FILE\.pth.*"
                   r"--hp pretrained=false"),
}


@pytest.mark.parametrize("change, extra, expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_each_bad_input_is_refused_at_once_with_no_job_folder_or_process(tmp_path, capsys, monkeypatch, change,
                                                                         extra, expected):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-cache"))
    data = make_dataset(tmp_path / "mypics", TINY)
    if change == "gone":
        data = tmp_path / "nothing-here"
    elif change:
        change(data)
    overrides = dict(pair.split("=", 1) for pair in extra[1::2])  # extra: --hp KEY=VALUE pairs
    code, out, err, seconds = run_launch(capsys, "train", "--local", "process", "--data", data, "--jobs-dir",
                                         tmp_path / "jobs", "--job-name", "j", *tiny_hp(**overrides))
    assert code == 1, out + err
    assert re.search(expected, err, re.S), err
    assert "channel" not in err.lower() and "SM_" not in err  # the user's terms
    assert seconds < 1.0, seconds
    assert not (tmp_path / "jobs").exists()
    assert not psutil.Process().children(recursive=True)


def earlier_job(jobs_dir, name, test_acc=0.9, age_days=0):
    """A finished local job's folder as a real one has it (model.json, the success marker, a checkpoint)."""
    folder = jobs_dir / name
    for sub in ("input/config", "model", "output", "checkpoints"):
        (folder / sub).mkdir(parents=True)
    (folder / "model" / "model.json").write_text(json.dumps({"metrics": {"test_acc": test_acc}}))
    (folder / "model" / "model.pth").write_bytes(b"w" * 2000)
    (folder / "model.tar.gz").write_bytes(b"t" * 1000)
    (folder / "output" / "success").write_text("")
    (folder / "checkpoints" / "checkpoint.pth").write_bytes(b"c" * 500)
    (folder / "train.log").write_text("epoch=1 valid_acc=0.9\n")
    if age_days:
        old = time.time() - age_days * 86400
        os.utime(folder, (old, old))
    return folder


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_reused_job_name_is_refused_and_the_earlier_job_is_untouched(tmp_path, capsys):
    data = make_dataset(tmp_path / "mypics", TINY)
    earlier = earlier_job(tmp_path / "jobs", "mine")
    before, mtime = snapshot(earlier), earlier.stat().st_mtime
    code, _, err, _ = run_launch(capsys, "train", "--local", "process", "--data", data, "--jobs-dir",
                                 tmp_path / "jobs", "--job-name", "mine", *tiny_hp())
    assert code == 1 and "A local job named mine already exists" in err and "--replace" in err
    assert snapshot(earlier) == before and earlier.stat().st_mtime == mtime


def test_jobs_lists_and_clean_removes_after_one_question(tmp_path, capsys, monkeypatch):
    jobs_dir = tmp_path / "jobs"
    earlier_job(jobs_dir, "old-one", 0.5, age_days=10)
    earlier_job(jobs_dir, "new-one", 0.975)
    code, out, _, _ = run_launch(capsys, "jobs", "--jobs-dir", jobs_dir)
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["NAME", "STATUS", "TEST", "ACC", "SIZE", "DATE"]
    assert rows[1].split()[:4] == ["old-one", "completed", "50.0%", "3.6"] and rows[2].startswith("new-one")
    assert "97.5%" in rows[2]

    monkeypatch.setattr("builtins.input", lambda prompt: "n")  # the one question, answered no: nothing goes
    assert run_launch(capsys, "clean", "--older-than", "7d", "--jobs-dir", jobs_dir)[0] == 0
    assert (jobs_dir / "old-one").is_dir()
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    code, out, _, _ = run_launch(capsys, "clean", "--older-than", "7d", "--jobs-dir", jobs_dir)
    assert code == 0 and "Removed 1 job(s)" in out
    assert not (jobs_dir / "old-one").exists() and (jobs_dir / "new-one").is_dir()
    code, _, _, _ = run_launch(capsys, "clean", "new-one", "--yes", "--jobs-dir", jobs_dir)
    assert code == 0 and not (jobs_dir / "new-one").exists()
    code, _, err, _ = run_launch(capsys, "clean", "nobody", "--yes", "--jobs-dir", jobs_dir)
    assert code == 1 and "no local job named nobody" in err


def test_deploy_local_names_the_job_it_serves(tmp_path, capsys, monkeypatch):
    job = earlier_job(tmp_path / "jobs", "served", 0.975)
    monkeypatch.setattr(serving, "install_model", lambda model, model_dir: None)
    monkeypatch.setattr(process, "serve", lambda model_dir, port, detach: None)
    monkeypatch.setattr(serving, "port_in_use", lambda port: False)
    serving.deploy(model=job / "model.tar.gz", port=18099, mode="process", detach=True)
    assert "Serving served (test accuracy 97.5%, trained " in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        launch.main(["--version"])
    assert done.value.code == 0 and re.fullmatch(r"image-classifier \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_progress_lines_are_plain_throttled_and_never_metrics():
    out = io.StringIO()
    line = ProgressLine(epoch=2, epochs=8, total=100, interval=0, out=out)
    for done in range(10, 101, 10):
        line(done)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 8  # not the first step (start-up) nor the last
    assert re.fullmatch(r"progress: epoch 2/8, 20/100 pictures, [\d.]+ images/s, ETA \d+:\d\d", lines[0])
    assert parse_metrics(lines) == {}  # the tuner's regexes read none of it
    throttled = io.StringIO()
    line = ProgressLine(epoch=1, epochs=1, total=100, interval=3600, out=throttled)
    for done in range(10, 101, 10):
        line(done)
    assert throttled.getvalue() == ""


def test_quiet_output_keeps_the_job_lines_and_drops_the_toolkits():
    toolkit = ["2026-12-06 20:50:18,238 sagemaker-training-toolkit INFO     Invoking user script", "SM_CHANNEL_TRAIN=/x",
               "2026-12-06 20:50:22,102 INFO Hyperparameters: arch=resnet18 pretrained=false",  # the job's, in the log
               "2026-12-06 20:50:32,901 INFO Profiler rule BatchSize NOT APPLICABLE: not applicable on CPU",
               "/usr/lib/python3/x.py:1: UserWarning: something", "rule_overfit=0"]
    assert all(job_output.summary_of(line) is None for line in toolkit)
    epoch = ("epoch=3 train_loss=0.8120 train_acc=0.7710 valid_loss=0.6330 valid_acc=0.8230 images_per_sec=412.5 "
             "bad_images=0 wall_images_per_sec=400.1 data_wait_share=0.0100")
    assert job_output.summary_of(epoch) == ("epoch 3: train accuracy 77.1%, valid accuracy 82.3% (loss 0.633), "
                                            "412.5 images/s")
    assert job_output.summary_of("2026-12-06 20:50:22,102 WARNING Skipping 1 unreadable") == "Skipping 1 unreadable"
    assert job_output.summary_of("2026-12-06 20:50:22,102 INFO Preset: cpu-quick") == "Preset: cpu-quick"


def readme_own_pictures_command():
    """The `train` command of README's "Train on your own pictures" section."""
    section = (PROJECT_DIR / "README.md").read_text().split("## Train on your own pictures", 1)[1].split("\n## ", 1)[0]
    return next(line.split("#")[0].strip() for line in section.splitlines()
                if line.startswith("python launch.py train "))


@pytest.mark.slow  # one real (tiny) training job through launch.py, as a user runs it
def test_the_readmes_own_pictures_command_trains_a_fresh_folder_offline(tmp_path):
    command = shlex.split(readme_own_pictures_command())
    assert "--preset" in command and "--data" in command
    make_dataset(tmp_path / command[command.index("--data") + 1], {"train": 24, "valid": 2, "test": 2})  # 3 steps
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "no-weights"), "IMAGE_CLASSIFIER_PROGRESS_SECONDS": "0",
           "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR / "container_src"), str(PROJECT_DIR)]),
           "NO_PROXY": "*", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # no network
    # The README's command as written, run from the folder holding mypics; only the jobs' folder is this test's.
    argv = [sys.executable, str(PROJECT_DIR / "launch.py"), *command[2:], "--jobs-dir", str(tmp_path / "jobs"),
            "--job-name", "first"]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"^progress: epoch 1/\d+, \d+/\d+ pictures, [\d.]+ images/s, ETA \d+:\d\d$", out, re.M), out
    assert re.search(r"^Training job first completed in .*, preset cpu-quick: test accuracy [\d.]+%", out, re.M), out
    assert f"model:  {tmp_path / 'jobs' / 'first' / 'model.tar.gz'}" in out and "next:   python launch.py deploy" in out
    assert "Training Env" not in out and "SM_CHANNEL" not in out and "rule_" not in out  # quiet: those are in the log
    job = tmp_path / "jobs" / "first"
    assert "Training Env" in (job / "train.log").read_text() and "Preset: cpu-quick" in (job / "train.log").read_text()
    assert json.loads((job / "model" / "model.json").read_text())["hyperparameters"]["preset"] == "cpu-quick"
    assert not any((job / "checkpoints").rglob("*.pth"))  # the model stays; the intermediate checkpoints went


def test_the_documented_presets_are_the_launchers():
    from launcher.presets import PRESETS

    page = (PROJECT_DIR / "docs" / "TRAINING.md").read_text()
    for name, (_, values) in PRESETS.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert " ".join(f"{key}={value}" for key, value in values.items()) in row, name


def test_every_positional_has_help_and_tune_says_nothing_of_local(capsys):
    from launcher.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if action.dest == "command").choices
    for name, command in commands.items():
        for action in command._actions:
            if not action.option_strings:
                assert action.help, f"{name} {action.metavar or action.dest}"
    with pytest.raises(SystemExit):
        parser.parse_args(["tune", "--help"])
    assert "--local" not in capsys.readouterr().out
