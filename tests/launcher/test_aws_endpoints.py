"""launch.py `deploy`, `predict` and `delete` on SageMaker, against moto (aws_cloud.py): the endpoint, its model
and everything that costs money until it is deleted."""

from botocore.exceptions import ClientError

from aws_cloud import BUCKET, IMAGE, ROLE, endpoint_answers, fails, ok, run, state
from aws_cloud import cloud, uploaded  # noqa: F401 - fixtures
from moto_server import moto_url  # noqa: F401 - a fixture (the cloud fixture uses it)
from conftest import make_dataset


# ------------------------------------------------------------------------------ deploy/predict/delete
def test_deploy_predict_delete_chain(cloud, capsys, uploaded):
    ok(capsys, "train", "--job-name", "ic-train-2")
    answer = {"predictions": [[{"label": "Red fox", "index": 0, "probability": 0.93},
                               {"label": "Blue whale", "index": 2, "probability": 0.05}]]}
    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", endpoint_answers(answer)))

    out = ok(capsys, "deploy", "--endpoint", "ic-endpoint")
    model = cloud.sent.one("CreateModel")
    assert model["ModelName"] == "ic-endpoint" and model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == state(cloud)["model_data"]
    config = cloud.sent.one("CreateEndpointConfig")
    assert config["ProductionVariants"][0]["ModelName"] == "ic-endpoint"
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"  # CPU by default
    endpoint = cloud.sent.one("CreateEndpoint")
    assert endpoint["EndpointConfigName"] == config["EndpointConfigName"]
    assert {"Key": "image-classifier:training-job", "Value": "ic-train-2"} in endpoint["Tags"]
    assert "Endpoint ic-endpoint is in service" in out and "Red fox" in out  # the sample prediction
    assert state(cloud)["endpoint"] == "ic-endpoint"

    picture = uploaded / "test" / "001.Red_fox" / "Red_fox_00000.JPG"
    out = ok(capsys, "predict", picture, "--top-k", 2)  # the endpoint comes from the state file
    invoke = [p for name, p in cloud.sent.calls if name == "InvokeEndpoint"][-1]
    assert invoke["EndpointName"] == "ic-endpoint" and invoke["ContentType"] == "image/jpeg"
    assert invoke["Accept"] == "application/json" and invoke["CustomAttributes"] == "top_k=2"
    assert "Red fox" in out and "93.00%" in out

    out = ok(capsys, "delete")
    assert "Deleted endpoint ic-endpoint, endpoint config ic-endpoint, model(s) ic-endpoint" in out
    assert cloud.sent.one("DeleteEndpoint") == {"EndpointName": "ic-endpoint"}
    assert cloud.sent.one("DeleteEndpointConfig") == {"EndpointConfigName": "ic-endpoint"}
    assert cloud.sent.one("DeleteModel") == {"ModelName": "ic-endpoint"}
    client = cloud.boto.client("sagemaker")
    assert client.list_endpoints()["Endpoints"] == [] and client.list_models()["Models"] == []
    assert "endpoint" not in state(cloud)
    assert "not found" in fails(capsys, "delete", "--endpoint", "ic-endpoint")


def test_deploy_a_given_model_data_uri(cloud, capsys):
    uri = f"s3://{BUCKET}/elsewhere/model.tar.gz"
    ok(capsys, "deploy", "--model-data", uri, "--endpoint", "ep-2", "--instance-type", "ml.g4dn.xlarge")
    assert cloud.sent.one("CreateModel")["PrimaryContainer"]["ModelDataUrl"] == uri
    assert cloud.sent.one("CreateEndpointConfig")["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
    assert "DescribeTrainingJob" not in cloud.sent.operations()


# ------------------------------------------------------------------------------------------- endpoints
def test_a_second_deploy_refuses_while_the_first_endpoint_runs(cloud, capsys):
    model = f"s3://{BUCKET}/m/model.tar.gz"
    out = ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-1")
    assert "Endpoint ep-1 costs money until you delete it: python launch.py delete --endpoint ep-1" in out
    for argv in ((), ("--endpoint", "ep-1")):
        line = fails(capsys, "deploy", "--model-data", model, *argv)
        assert "endpoint ep-1" in line and "python launch.py delete --endpoint ep-1" in line
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-2")  # another name: a second endpoint on purpose
    assert cloud.sent.operations().count("CreateEndpoint") == 2


def test_delete_after_a_refused_second_deploy_leaves_nothing(cloud, capsys):
    """The refused deploy made nothing of its own, and `delete` removes all the first one made."""
    model = f"s3://{BUCKET}/m/model.tar.gz"
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-1")
    client = cloud.boto.client("sagemaker")
    made = (client.list_endpoints()["Endpoints"], client.list_endpoint_configs()["EndpointConfigs"],
            client.list_models()["Models"])
    assert [len(listed) for listed in made] == [1, 1, 1]
    fails(capsys, "deploy", "--model-data", model)
    fails(capsys, "deploy", "--model-data", model, "--endpoint", "ep-1")
    assert "Deleted endpoint ep-1, endpoint config ep-1, model(s) ep-1" in ok(capsys, "delete")
    assert client.list_endpoints()["Endpoints"] == []
    assert client.list_endpoint_configs()["EndpointConfigs"] == []
    assert client.list_models()["Models"] == []
    assert "endpoint" not in state(cloud)


def test_failed_sample_prediction_and_ctrl_c_still_say_what_costs(cloud, capsys, tmp_path):
    picture = make_dataset(tmp_path / "d", per_split={"test": 1}) / "test" / "001.Red_fox" / "Red_fox_00000.JPG"

    def model_error(**_):
        raise ClientError({"Error": {"Code": "ModelError", "Message": "Received server error (500)"}}, "InvokeEndpoint")

    cloud.sent.handlers.append(("before-call.*.InvokeEndpoint", model_error))
    code, out, err = run(capsys, "deploy", "--model-data", f"s3://{BUCKET}/m.tar.gz", "--endpoint", "ep-s",
                         "--sample-image", picture)
    assert code == 1 and "ModelError" in err
    assert "Endpoint ep-s costs money until you delete it" in out
    assert state(cloud)["endpoint"] == "ep-s"  # recorded before the sample prediction

    def interrupt(**_):
        raise KeyboardInterrupt

    cloud.sent.handlers[:] = [("before-call.sagemaker.DescribeEndpoint", interrupt)]
    code, out, err = run(capsys, "deploy", "--model-data", f"s3://{BUCKET}/m.tar.gz", "--endpoint", "ep-c",
                         "--image-uri", IMAGE)
    assert code == 1 and "keeps running" in err
    assert "Endpoint ep-c costs money until you delete it: python launch.py delete --endpoint ep-c" in out


def test_delete_all_removes_everything_tagged_after_one_confirmation(cloud, capsys, monkeypatch):
    model = f"s3://{BUCKET}/m/model.tar.gz"
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-1")
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-2")
    client = cloud.boto.client("sagemaker")
    client.create_model(ModelName="not-ours", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    out = ok(capsys, "delete", "--all")
    assert "endpoint: ep-1" in out and "model: ep-2" in out and "not-ours" not in out and "Nothing deleted" in out
    assert len(client.list_endpoints()["Endpoints"]) == 2
    out = ok(capsys, "delete", "--all")
    assert "Deleted 6" in out
    assert client.list_endpoints()["Endpoints"] == [] and client.list_endpoint_configs()["EndpointConfigs"] == []
    assert [m["ModelName"] for m in client.list_models()["Models"]] == ["not-ours"]
    assert "endpoint" not in state(cloud)
    ok(capsys, "deploy", "--model-data", model, "--endpoint", "ep-3")
    assert "Deleted 3" in ok(capsys, "delete", "--all", "--yes")  # no question asked (input() would raise)
