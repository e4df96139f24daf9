"""The smdebug hook in the training job, its numpy shim, and profiling on and off."""
import json
import warnings

import numpy as np
import pytest
import torch

from conftest import train_job
from debug_runs import HEALTHY_JOB_HPS, healthy_job
from image_classifier import constants, contract
from image_classifier.training.hyperparameters import Hyperparameters
from image_classifier.diagnostics.debugger_hook import TensorRecorder, install_numpy_compat
from image_classifier.training.environment import TrainingEnvironment
from image_classifier.metrics import parse_metrics


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return healthy_job(tmp_path_factory.getbasetemp() / "debug-jobs")


def trial_of(path):
    from smdebug.trials import create_trial

    return create_trial(str(path))


def test_numpy_shim_serialises_without_tostring():
    """smdebug calls ndarray.tostring (deprecated, removed in numpy 2.3); the shim gives the same bytes."""
    install_numpy_compat()
    from smdebug.core import writer

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's own tostring() would warn (or be missing)
        proto = writer.make_tensor_proto(values, "t")
        words = writer.make_tensor_proto(np.array(["a", "bc"]), "s")
    assert proto.tensor_content == values.tobytes()
    assert [d.size for d in proto.tensor_shape.dim] == [2, 3]
    assert list(words.string_val) == [b"a", b"bc"]
    install_numpy_compat()  # idempotent
    assert writer.make_tensor_proto(values, "t").tensor_content == values.tobytes()


def _env(base, hook_config=None):
    return TrainingEnvironment(base_dir=base, model_dir=base / "model", output_dir=base / "output",
                               output_data_dir=base / "output" / "data", checkpoint_dir=base / "checkpoints",
                               debug_hook_config=hook_config)


def _train_steps(recorder, model, criterion, steps):
    recorder.set_mode("train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = criterion(model(torch.randn(4, 5)), torch.tensor([0, 1, 0, 1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recorder.close()


def test_hook_follows_sagemakers_config_under_the_jobs_base_dir(tmp_path):
    """debughookconfig.json as SageMaker writes it: LocalPath /opt/ml/... lands in this job's output."""
    config = tmp_path / "input" / "config" / "debughookconfig.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({
        "S3OutputPath": "s3://bucket/job/debug-output", "LocalPath": "/opt/ml/output/tensors",
        "HookParameters": {"save_interval": "2"},
        "CollectionConfigurations": [{"CollectionName": "losses"}]}))
    model, criterion = torch.nn.Linear(5, 2), torch.nn.CrossEntropyLoss()
    recorder = TensorRecorder.start(_env(tmp_path, config), Hyperparameters(), model, criterion)
    assert recorder.out_dir == tmp_path / "output" / "tensors"
    _train_steps(recorder, model, criterion, 5)
    trial = trial_of(recorder.out_dir)
    assert trial.tensor("CrossEntropyLoss_output_0").steps() == [0, 2, 4]
    assert not trial.tensor_names(collection="weights")  # the config asked for losses only


def test_hook_off_records_nothing(tmp_path):
    model, criterion = torch.nn.Linear(5, 2), torch.nn.CrossEntropyLoss()
    recorder = TensorRecorder.start(_env(tmp_path), Hyperparameters(debug_hook=False), model, criterion)
    _train_steps(recorder, model, criterion, 2)
    assert recorder.hook is None and not (tmp_path / "output" / "tensors").exists()


def _weighted_means(trial, mode, steps_per_epoch):
    """Per epoch: the mean loss over its saved steps, weighted by each batch's size (its labels)."""
    loss, labels = trial.tensor("CrossEntropyLoss_output_0"), trial.tensor("CrossEntropyLoss_input_1")
    steps = loss.steps(mode=mode)
    means = []
    for start in range(0, len(steps), steps_per_epoch):
        epoch = steps[start:start + steps_per_epoch]
        sizes = [labels.value(s, mode=mode).size for s in epoch]
        means.append(sum(float(loss.value(s, mode=mode)) * n for s, n in zip(epoch, sizes)) / sum(sizes))
    return means


def test_saved_losses_equal_the_logged_losses(job):
    """Train (36 pictures, batch 4: 9 steps) and valid (18: 5 steps) losses read back from the tensors
    give exactly the per-epoch losses the job printed."""
    from smdebug import modes

    logged = parse_metrics(job.log_file.read_text().splitlines())
    trial = trial_of(job.dir / "output" / contract.TENSORS_FOLDER)
    epochs = int(HEALTHY_JOB_HPS["epochs"])
    assert len(trial.tensor("CrossEntropyLoss_output_0").steps(mode=modes.TRAIN)) == 9 * epochs
    assert [round(v, 4) for v in _weighted_means(trial, modes.TRAIN, 9)] == logged["train_loss"]
    assert [round(v, 4) for v in _weighted_means(trial, modes.EVAL, 5)] == logged["valid_loss"]
    test_steps = trial.tensor("CrossEntropyLoss_output_0").steps(mode=modes.PREDICT)
    assert len(test_steps) == 5  # the test pass, in its own mode


def test_weights_and_gradients_are_saved_sparsely(job):
    from smdebug import modes

    trial = trial_of(job.dir / "output" / contract.TENSORS_FOLDER)
    # debug-tensor-interval is 200 by default: in a 27-step run only training step 0 holds them.
    for name in ("ResNet_fc.weight", "gradient/ResNet_fc.weight", "ResNet_fc.bias"):
        assert trial.tensor(name).steps(mode=modes.TRAIN) == [0], name
        assert trial.tensor(name).steps(mode=modes.EVAL) == [], name


def test_profiling_on_writes_trace_table_and_system_metrics(job):
    data = job.dir / "output" / "data"
    trace = json.loads((data / constants.PROFILER_TRACE_FILE).read_text())
    assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
    operators = json.loads((data / constants.PROFILER_OPS_FILE).read_text())
    assert operators and all(op["calls"] > 0 for op in operators)
    assert "Self CPU" in (data / constants.PROFILER_TABLE_FILE).read_text()
    system = json.loads((data / constants.SYSTEM_METRICS_FILE).read_text())
    assert system["summary"]["steps"] == 27 and len(system["steps"]["data_seconds"]) == 27
    assert 0 < system["summary"]["data_wait_share"] < 1
    assert system["samples"] and "cpu_percent" in system["samples"][0]


def test_profiling_and_hook_off_finish_and_write_nothing(tmp_path):
    job, exit_code = train_job(tmp_path, {"epochs": "1", "max-steps-per-epoch": "3", "debug-hook": "false",
                                          "profile": "false"}, name="plain")
    assert exit_code == 0, job.log_file.read_text()[-3000:]
    data = job.dir / "output" / "data"
    assert not (job.dir / "output" / contract.TENSORS_FOLDER).exists()
    for name in (constants.PROFILER_TRACE_FILE, constants.SYSTEM_METRICS_FILE):
        assert not (data / name).exists(), name
    # The profiler rules judge every job (the system monitor always runs); no tensors, no Debugger rules.
    rules = json.loads((data / constants.RULES_FILE).read_text())
    assert rules["rules"] == [] and [r["rule"] for r in rules["profiler_rules"]][0] == "Dataloader"
    assert "test_acc" in parse_metrics(job.log_file.read_text().splitlines())
