"""`launch.py report --job` on a SageMaker job, against moto in server mode.

A real (tiny) training job runs here first; its outputs are then put into the emulated S3 where SageMaker
would put them (output.tar.gz under the job's output path; the tensors under the Debugger hook's path, or
inside output.tar.gz for a job without Debugger), and its log into emulated CloudWatch as one stream.
The report must read every log page (GetLogEvents pages forward with nextForwardToken), find the tensors
in either place, and never write outside its folder whatever the S3 keys say.
"""
import io
import tarfile
import time

import pytest

from conftest import needs_container_packages, train_job
from image_classifier import constants, contract
from image_classifier.metrics import parse_metrics
from launcher import report
from moto_server import moto_url  # noqa: F401 - a fixture
from aws_cloud import BUCKET, IMAGE, ROLE, cloud, fails, ok  # noqa: F401 - cloud is a fixture

LOG_PAGE = 7  # events per GetLogEvents page here, so that the log takes several pages


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, monkeypatch_module):
    """A real job that wrote its tensors into its output data, as `train --no-debugger` makes it do."""
    tmp = tmp_path_factory.mktemp("sagemaker-job")
    monkeypatch_module.setenv(constants.TENSORS_DIR_ENV, str(tmp / "jobs" / "job" / "output" / "data" / "tensors"))
    job, exit_code = train_job(tmp, {"epochs": "3", "debug-loss-interval": "2"})
    assert exit_code == 0, job.log_file.read_text()[-3000:]
    return job


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def output_archive(data_dir, with_tensors):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(data_dir.iterdir()):
            if with_tensors or path.name != contract.TENSORS_FOLDER:
                tar.add(path, arcname=path.name)
    return buffer.getvalue()


def publish(cloud, job, name, debugger):
    """Create the job in the emulated SageMaker and put its outputs where SageMaker would."""
    sagemaker, s3, logs = (cloud.boto.client(s) for s in ("sagemaker", "s3", "logs"))
    request = dict(
        TrainingJobName=name, RoleArn=ROLE, HyperParameters={"epochs": "3"},
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/image-classifier/jobs"},
        ResourceConfig={"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})
    if debugger:
        request["DebugHookConfig"] = {"S3OutputPath": f"s3://{BUCKET}/image-classifier/tensors"}
    sagemaker.create_training_job(**request)
    data_dir = job.dir / "output" / "data"
    s3.put_object(Bucket=BUCKET, Key=f"image-classifier/jobs/{name}/output/output.tar.gz",
                  Body=output_archive(data_dir, with_tensors=not debugger))
    if debugger:
        tensors = data_dir / contract.TENSORS_FOLDER
        for path in sorted(p for p in tensors.rglob("*") if p.is_file()):
            s3.put_object(Bucket=BUCKET, Body=path.read_bytes(),
                          Key=f"image-classifier/tensors/{name}/debug-output/{path.relative_to(tensors).as_posix()}")
    group = report.LOG_GROUP
    if group not in [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]:
        logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=f"{name}/algo-1-1700000000")
    lines = [line for line in job.log_file.read_text().splitlines() if line]  # CloudWatch has no empty events
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=f"{name}/algo-1-1700000000",
                        logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)])
    return lines


def small_log_pages(cloud):
    cloud.sent.handlers.append(("provide-client-params.logs.GetLogEvents",
                                lambda params, **_: params.update(limit=LOG_PAGE)))


@needs_container_packages
@pytest.mark.slow  # one real training job (module-wide)
@pytest.mark.parametrize("debugger", [True, False], ids=["debugger", "no-debugger"])
def test_report_job_reads_what_the_job_left_in_s3_and_cloudwatch(cloud, capsys, finished_job, tmp_path, debugger,
                                                                 monkeypatch):
    name = f"ic-report-{'hook' if debugger else 'plain'}"
    lines = publish(cloud, finished_job, name, debugger)
    assert len(lines) > 3 * LOG_PAGE
    small_log_pages(cloud)
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN")  # report --job needs no role (nor a bucket)
    monkeypatch.delenv("SAGEMAKER_BUCKET")
    out = ok(capsys, "report", "--job", name, "--out", tmp_path / "report")
    assert f"Report: {tmp_path / 'report' / 'report.html'}" in out
    page = (tmp_path / "report" / "report.html").read_text()
    for section in ("Loss", "Accuracy", "Test confusion matrix", "Rules", "Hyperparameters"):
        assert f"<h2>{section}</h2>" in page, section
    assert "No saved tensors" not in page
    assert "<td>instance</td><td>1 x ml.g4dn.xlarge (SageMaker)</td>" in page  # the header, from DescribeTrainingJob
    pages = [p for op, p in cloud.sent.calls if op == "GetLogEvents"]
    assert len(pages) > len(lines) // LOG_PAGE and pages[1]["nextToken"]  # followed page after page
    where = tmp_path / "report" / "job"
    files = report.sagemaker_job(name, tmp_path / "again", cloud.boto)
    assert files.log_lines == lines  # every line, in order
    assert parse_metrics(files.log_lines)["valid_acc"] == parse_metrics(lines)["valid_acc"]
    assert files.tensors_dir is not None and report.loss_series(files.tensors_dir)["train"][1]
    assert (where / "output" / "data" / constants.RULES_FILE).is_file()


def test_s3_keys_cannot_write_outside_the_target_folder(cloud, tmp_path, capsys):
    s3 = cloud.boto.client("s3")
    prefix = "image-classifier/tensors/ic-evil/debug-output"
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/index/000000000/000000000000_worker_0.json", Body=b"{}")
    for key in (f"{prefix}/../../../../../escaped.txt", f"{prefix}/index/../../../escaped-too.txt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"not yours")
    target = tmp_path / "deep" / "report" / "tensors"
    found = report._download_prefix(s3, f"s3://{BUCKET}/{prefix}", target)
    assert found == target.resolve()
    assert (target / "index" / "000000000" / "000000000000_worker_0.json").is_file()
    assert not list(tmp_path.rglob("escaped*"))
    out = capsys.readouterr().out
    assert out.count("would be written outside") == 2


def test_report_job_name_is_one_safe_path_component(cloud, capsys):
    """The job name becomes the report's folder: a name that climbs out of reports/ is refused, nothing written."""
    line = fails(capsys, "report", "--job", "../escaped")
    assert "Job name '../escaped' is not allowed" in line
    assert not (report.REPORTS_DIR.parent / "escaped").exists()


def test_a_jobs_log_is_its_own_streams_only(cloud):
    """Stream names are `<job>/algo-N-<time>`: job `run1` must not read the streams of `run10`."""
    logs = cloud.boto.client("logs")
    logs.create_log_group(logGroupName=report.LOG_GROUP)
    for job, line in (("run1", "epoch=1 of run1"), ("run10", "epoch=1 of run10")):
        logs.create_log_stream(logGroupName=report.LOG_GROUP, logStreamName=f"{job}/algo-1-1700000000")
        logs.put_log_events(logGroupName=report.LOG_GROUP, logStreamName=f"{job}/algo-1-1700000000",
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": line}])
    assert report._cloudwatch_lines(cloud.boto, "run1") == ["epoch=1 of run1"]
    assert report._cloudwatch_lines(cloud.boto, "run10") == ["epoch=1 of run10"]


def test_s3_folder_objects_are_skipped(cloud, tmp_path):
    """A key ending in `/` (the S3 console's "Create folder") is no file: the download goes on past it."""
    s3 = cloud.boto.client("s3")
    prefix = "image-classifier/tensors/ic-folders/debug-output"
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/index/", Body=b"")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/index/000000000/000000000000_worker_0.json", Body=b"{}")
    target = tmp_path / "tensors"
    assert report._download_prefix(s3, f"s3://{BUCKET}/{prefix}", target) == target.resolve()
    assert (target / "index" / "000000000" / "000000000000_worker_0.json").read_bytes() == b"{}"
