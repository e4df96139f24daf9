"""`launch.py transform --local`: SageMaker's batch transform over a folder, against the real `serve`.

One request per picture, one `<picture>.out` per answer, a summary CSV; a refused picture does not stop the
job (as on SageMaker): the others are answered, the refused ones listed, exit 2; --stop-on-bad stops at the
first, naming it.
"""
import csv
import json

import pytest

import launch
from conftest import needs_container_packages, train_job, write_picture
from image_classifier.metrics import parse_metrics
from launcher import transform
from launcher.local.training import DIGITS_HYPERPARAMETERS
from launcher.sample_data import write_digits
from serving_harness import free_port, require_java

pytestmark = [needs_container_packages, require_java(pytest)]


@pytest.fixture(autouse=True)
def serving_dir_in_tmp(tmp_path, monkeypatch):
    """The local model server's folder (model copy, log) in the test's own tmp_path, not local_jobs/."""
    from launcher.local import trees

    monkeypatch.setattr(trees, "SERVING_DIR", tmp_path / "serving")


def run(capsys, *argv):
    code = launch.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def class_name(folder):
    """`003.three` -> `three` (the training job's naming of classes)."""
    return folder.split(".", 1)[-1].replace("_", " ")


@pytest.mark.slow  # a real training run on the digits sample, then its whole test split through serve
def test_transform_of_the_digits_test_split_has_the_jobs_test_accuracy(tmp_path, capsys):
    data = tmp_path / "digits"
    write_digits(data)
    # quantize=false: the job's test accuracy is the fp32 model's (its int8 model is judged on valid only)
    job, exit_code = train_job(tmp_path, {**DIGITS_HYPERPARAMETERS, "epochs": "2", "workers": "0", "quantize": "false"},
                               channels={"train": data})
    assert exit_code == 0, job.log_file.read_text()[-3000:]
    test_acc = parse_metrics(job.log_file.read_text().splitlines())["test_acc"][-1]

    out = tmp_path / "out"
    code, stdout, err = run(capsys, "transform", "--local", "process", "--data", data / "test", "--output", out,
                            "--model", job.dir / "model", "--port", free_port(), "--max-concurrent", 3)
    assert code == 0, err
    pictures = sorted((data / "test").rglob("*.png"))
    outs = sorted(out.rglob("*.out"))
    assert len(outs) == len(pictures) > 200
    right = 0
    for picture in pictures:
        answer = json.loads((out / picture.relative_to(data / "test")).with_name(picture.name + ".out").read_text())
        right += answer["predictions"][0][0]["label"] == class_name(picture.parent.name)
    assert round(right / len(pictures), 4) == pytest.approx(test_acc, abs=1e-4)
    assert "pictures/s" in err and f"{len(pictures)}/{len(pictures)} pictures" in err

    with open(out / transform.SUMMARY_FILE) as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(pictures) and set(rows[0]) == set(transform.SUMMARY_COLUMNS)
    assert sum(row["label"] == class_name(row["file"].split("/")[0]) for row in rows) == right
    assert "Top-1 labels:" in stdout

    # --summarize alone rewrites the same summary from the .out files.
    code, stdout, _ = run(capsys, "transform", "--summarize", out, "--csv", tmp_path / "again.csv")
    assert code == 0 and f"Summary of {len(pictures)} picture(s)" in stdout
    assert (tmp_path / "again.csv").read_text() == (out / transform.SUMMARY_FILE).read_text()


def bad_folder(tmp_path):
    """Three good pictures, a truncated JPEG and a text file."""
    folder = tmp_path / "pictures"
    for index, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        write_picture(folder / f"good_{index}.jpg", colour, seed=index)
    whole = write_picture(folder / "broken.jpg", (200, 30, 30), size=64, seed=9).read_bytes()
    (folder / "broken.jpg").write_bytes(whole[:len(whole) // 2])
    (folder / "notes" / "readme.txt").parent.mkdir()
    (folder / "notes" / "readme.txt").write_text("not a picture\n")
    return folder


def test_bad_pictures_do_not_stop_the_job_unless_stop_on_bad(tmp_path, capsys, trained_model_dir):
    folder = bad_folder(tmp_path)
    out = tmp_path / "out"
    common = ["transform", "--local", "process", "--data", folder, "--model", trained_model_dir,
              "--port", free_port(), "--max-concurrent", 1]

    code, _, err = run(capsys, *common, "--output", out, "--stop-on-bad")
    assert code == 1
    assert f"error: {folder / 'broken.jpg'}: refused with 400" in err and "--stop-on-bad" in err
    assert not list(out.rglob("*.out"))  # sorted: broken.jpg is the first file sent

    code, stdout, err = run(capsys, *common, "--output", out)  # by default: every picture tried
    assert code == 2, err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.out")) == [
        "good_0.jpg.out", "good_1.jpg.out", "good_2.jpg.out"]
    assert "2 picture(s) refused, no .out file for them:" in stdout
    assert f"{folder / 'broken.jpg'}: 400" in stdout and f"{folder / 'notes' / 'readme.txt'}: 400" in stdout
    assert "3 picture(s) transformed" in stdout and "error: 2 picture(s) refused" in err
    [server] = (tmp_path / "serving").iterdir()  # the model copy is gone, the server's log stays
    assert not (server / "model").exists() and (server / "serve.log").is_file()
    with open(out / transform.SUMMARY_FILE) as stream:
        assert [row["file"] for row in csv.DictReader(stream)] == ["good_0.jpg", "good_1.jpg", "good_2.jpg"]


def test_input_files_skip_hidden_ones_and_name_outputs_as_sagemaker_does(tmp_path):
    folder = tmp_path / "in"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "b" / "x.jpg").write_bytes(b"1")
    (folder / ".complete").write_text("")
    assert transform.input_files(folder) == [folder / "a" / "b" / "x.jpg"]
    assert transform.out_path(tmp_path / "o", folder, folder / "a" / "b" / "x.jpg") == tmp_path / "o" / "a" / "b" / "x.jpg.out"
    assert transform.concurrent_requests(3) == 6


def test_a_local_job_serves_with_one_single_thread_worker_per_core_unless_told(monkeypatch):
    from image_classifier.serving import settings

    monkeypatch.setattr(transform.shutil, "which", lambda name: None)  # no nvidia-smi: a CPU machine
    monkeypatch.setattr(settings, "cpu_count", lambda: 4)
    plenty = type("Memory", (), {"available": 64 * transform.WORKER_MEMORY_BYTES})
    monkeypatch.setattr(transform.psutil, "virtual_memory", lambda: plenty)
    assert transform.batch_serving_settings({}) == {settings.WORKERS_ENV: "4", settings.TORCH_THREADS_ENV: "1"}
    assert transform.local_workers(transform.batch_serving_settings({})) == 4
    # The shell's own choice wins, and then serve's defaults hold (one worker per core sharing the cores;
    # one per two cores without sharing).
    assert transform.batch_serving_settings({settings.TORCH_THREADS_ENV: "2"}) == {}
    assert transform.local_workers({}) == 4
    assert transform.local_workers({settings.SHARE_CORES_ENV: "false"}) == 2
    # No more workers than the free memory holds.
    short = type("Memory", (), {"available": 2.5 * transform.WORKER_MEMORY_BYTES})
    monkeypatch.setattr(transform.psutil, "virtual_memory", lambda: short)
    assert transform.batch_serving_settings({})[settings.WORKERS_ENV] == "2"
    # A GPU may be there: serve's defaults (one worker per GPU).
    monkeypatch.setattr(transform.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert transform.batch_serving_settings({}) == {}


def test_the_environment_is_restored_after_the_server_starts(monkeypatch):
    monkeypatch.setenv("IMAGE_CLASSIFIER_TEST_SETTING", "shell")
    monkeypatch.delenv("IMAGE_CLASSIFIER_TEST_OTHER", raising=False)
    with transform.environment({"IMAGE_CLASSIFIER_TEST_SETTING": "job", "IMAGE_CLASSIFIER_TEST_OTHER": "1"}):
        assert transform.os.environ["IMAGE_CLASSIFIER_TEST_SETTING"] == "job"
    assert transform.os.environ["IMAGE_CLASSIFIER_TEST_SETTING"] == "shell"
    assert "IMAGE_CLASSIFIER_TEST_OTHER" not in transform.os.environ
