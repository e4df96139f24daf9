"""Batch transform with the SageMaker SDK's own local mode as the client, against the real image.

`Model(...).transformer(instance_type="local")` runs the image's `serve` under docker-compose, asks it
for `GET /execution-parameters`, sends every picture of a folder as one request and writes
`<picture>.out`. The settings are the ones `launch.py transform` sends to SageMaker (SingleRecord, the
server's payload cap); the container has no /execution-parameters route, and the job must not need one.
The top-1 labels are checked against `transform --local docker` over the same folder and model.
"""
import json
import shutil
import tarfile

import pytest

from conftest import write_picture
from launcher import docker_image, transform
from test_container import REGION, ROLE, assert_top_k, containers_of, free_port, image  # noqa: F401 (fixture)

pytestmark = [pytest.mark.docker, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("docker-compose") is None,
                                 reason="the SageMaker SDK's local mode needs docker-compose "
                                        "(Debian: apt-get install docker-compose)")]

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
CLASSES = 3  # the tiny training run's (conftest.TINY_CLASSES): top-k answers hold all of them


def pictures_folder(folder):
    """A JPEG and a PNG of each colour: two content types, so the job sends application/x-image. Flat:
    the SDK's local mode, unlike SageMaker, reads only the top level of a file:// folder."""
    for index, (name, colour) in enumerate(COLOURS.items()):
        write_picture(folder / f"{name}.jpg", colour, size=32, seed=index)
        write_picture(folder / f"{name}.png", colour, size=24, seed=10 + index)
    return folder


def model_tarball(model_dir, path):
    """model.tar.gz as SageMaker makes it: the model folder's files at the archive's root."""
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(model_dir.iterdir()):
            tar.add(file, arcname=file.name)
    return path


def local_session(tmp_path, port):
    import boto3
    from sagemaker.local import LocalSession

    boto_session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    session = LocalSession(boto_session=boto_session, sagemaker_config={
        "SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}})
    (tmp_path / "sm").mkdir()
    session.config = {"local": {"local_code": True, "serving_port": port, "container_root": str(tmp_path / "sm")}}
    return session


def test_sdk_local_mode_transformer_writes_one_out_per_picture(image, trained_model_dir, tmp_path, monkeypatch):  # noqa: F811
    import sagemaker.local.entities as local_entities
    from sagemaker.model import Model

    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    pictures = pictures_folder(tmp_path / "pictures")
    files = transform.input_files(pictures)
    content_type = transform.job_content_type([file.name for file in files])
    assert content_type == "application/x-image"
    model_data = model_tarball(trained_model_dir, tmp_path / "model.tar.gz")

    asked = []  # the SDK's GET requests to the container (/ping, /execution-parameters) and their codes
    perform_request = local_entities._perform_request

    def recording(url, pool_manager=None):
        response, code = perform_request(url, pool_manager)
        asked.append((url.rsplit("/", 1)[-1], code))
        return response, code

    monkeypatch.setattr(local_entities, "_perform_request", recording)
    session = local_session(tmp_path, free_port())
    out = tmp_path / "out"
    before = containers_of(image)
    model = Model(image_uri=image, model_data=f"file://{model_data}", role=ROLE, sagemaker_session=session,
                  env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    transformer = model.transformer(instance_count=1, instance_type="local", strategy="SingleRecord",
                                    max_payload=transform.MAX_PAYLOAD_MB, accept="application/json",
                                    output_path=f"file://{out}")
    try:
        transformer.transform(f"file://{pictures}", data_type="S3Prefix", content_type=content_type,
                              split_type=None, wait=True, logs=False)
        job = session.sagemaker_client.describe_transform_job(transformer.latest_transform_job.name)
    finally:
        model.delete_model()
        leftovers = containers_of(image) - before  # docker-compose leaves the stopped container behind
        if leftovers:
            docker_image.docker("rm", "-f", *leftovers, check=False, timeout=120)

    assert job["TransformJobStatus"] == "Completed" and job["BatchStrategy"] == "SingleRecord"
    # The SDK asked for the container's execution parameters and got none (MMS has no such route: 404);
    # the job ran on the settings it was given.
    assert [code for path, code in asked if path == "execution-parameters"] == [404]
    assert ("ping", 200) in asked

    outs = sorted(path.name for path in out.iterdir())
    assert outs == sorted(f"{file.name}{transform.OUT_SUFFIX}" for file in files)
    sdk_top = {}
    for file in files:
        answer = json.loads((out / f"{file.name}{transform.OUT_SUFFIX}").read_bytes())
        assert set(answer) == {"predictions"} and len(answer["predictions"]) == 1
        labels = answer["predictions"][0]
        assert_top_k(labels, CLASSES)
        assert {"label", "index", "probability"} <= set(labels[0])
        assert labels == transform.read_out(out / f"{file.name}{transform.OUT_SUFFIX}")
        sdk_top[file.name] = labels[0]

    # The same folder through `transform --local docker` (our client, the same image and model, one worker
    # as above).
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    monkeypatch.setenv("IMAGE_URI_FILE", str(tmp_path / "image-uri"))
    (tmp_path / "image-uri").write_text(image)
    monkeypatch.setattr(transform.trees, "SERVING_DIR", tmp_path / "serving")
    done, bad, complete = transform.local(pictures, tmp_path / "ours", model=trained_model_dir, mode="docker",
                                          port=free_port())
    assert (done, bad, complete) == (len(files), [], True)
    for file in files:
        ours = transform.read_out(tmp_path / "ours" / f"{file.name}{transform.OUT_SUFFIX}")[0]
        assert ours["label"] == sdk_top[file.name]["label"]
        assert ours["probability"] == pytest.approx(sdk_top[file.name]["probability"], abs=1e-4)
