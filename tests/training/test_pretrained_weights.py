"""`train --local --pretrained-weights`: fine-tune from a state_dict that an earlier local job produced.

The first job learns the digits sample from scratch; the second starts from its model.pth with only the
last stage and a new head trainable. The frozen layers must come out unchanged, and the first epoch must
start far above chance (10 classes: 0.1), which a random backbone does not reach in one epoch at this size.
"""
import json
import logging
import os

import pytest
import torch
import torchvision

import launch
from image_classifier.metrics import parse_metrics
from image_classifier.model import UnsafePickleError, pretrained_state
from launcher.sample_data import write_digits

FROM_SCRATCH = {"arch": "resnet18", "pretrained": "false", "trainable-layers": "4", "image-size": "32",
                "epochs": "3", "batch-size": "32", "lr": "0.002", "augment": "none", "workers": "0",
                "debug-hook": "false", "rules": "false"}


def run_local(jobs_dir, data, name, hyperparameters, *extra):
    argv = ["train", "--local", "process", "--jobs-dir", str(jobs_dir), "--data", str(data), "--job-name", name]
    for key, value in hyperparameters.items():
        argv += ["--hp", f"{key}={value}"]
    assert launch.main(argv + [str(a) for a in extra]) == 0
    return jobs_dir / name


@pytest.mark.slow  # two real (small) training jobs
def test_fine_tune_from_an_earlier_jobs_weights(tmp_path, capsys):
    data = tmp_path / "digits"
    write_digits(data)
    jobs = tmp_path / "jobs"
    base = run_local(jobs, data, "base", FROM_SCRATCH)
    weights = base / "model" / "model.pth"

    fine_tune = {k: v for k, v in FROM_SCRATCH.items() if k != "pretrained"}  # --pretrained-weights implies it
    tuned = run_local(jobs, data, "tuned", dict(fine_tune, **{"trainable-layers": "1", "epochs": "1"}),
                      "--pretrained-weights", weights)
    log = (tuned / "train.log").read_text()
    assert "from the 'pretrained' channel" in log
    first_epoch_acc = parse_metrics(log.splitlines())["valid_acc"][0]
    assert first_epoch_acc > 0.6, log[-2000:]  # chance is 0.1

    before = torch.load(weights, weights_only=True)
    after = torch.load(tuned / "model" / "model.pth", weights_only=True)
    # Frozen: every parameter but layer4's and the new head's (BatchNorm's running statistics still update).
    names = [n for n, _ in torchvision.models.resnet18().named_parameters()]
    frozen = [n for n in names if not n.startswith(("layer4.", "fc."))]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert not torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])  # the trained stage moved
    assert json.loads((tuned / "model" / "model.json").read_text())["hyperparameters"]["trainable-layers"] == "1"


class _RunsCode:
    """A pickle that runs a command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cached_torchvision_weights_are_loaded_with_weights_only(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    name = torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    torch.save({"conv1.weight": _RunsCode(marker)}, cache / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UnsafePickleError, match="posix.system"):
        pretrained_state("resnet18")
    assert not marker.exists()


def test_a_pretrained_file_name_cannot_forge_a_metric_line(tmp_path, caplog):
    channel = tmp_path / "pretrained"
    channel.mkdir()
    forged = channel / "w\ntest_acc=0.999 .pth"
    torch.save({"conv1.weight": torch.zeros(1)}, forged)
    with caplog.at_level(logging.INFO, logger="image_classifier"):
        assert pretrained_state("resnet18", channel)["conv1.weight"].shape == (1,)
    assert "'pretrained' channel" in caplog.text
    assert parse_metrics(caplog.text.splitlines()) == {}
    # An unsafe file's refusal (logged as the job's failure) quotes the name too.
    torch.save({"x": _RunsCode(tmp_path / "ran")}, forged)
    with pytest.raises(UnsafePickleError) as refused:
        pretrained_state("resnet18", channel)
    assert "\n" not in str(refused.value) and parse_metrics([str(refused.value)]) == {}
