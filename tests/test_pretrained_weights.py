"""`train --local --pretrained-weights`: fine-tune from a state_dict that an earlier local job produced.

The first job learns the digits sample from scratch; the second starts from its model.pth with only the
last stage and a new head trainable. The frozen layers must come out unchanged, and the first epoch must
start far above chance (10 classes: 0.1), which a random backbone does not reach in one epoch at this size.
"""
import json

import pytest
import torch
import torchvision

import launch
from image_classifier.metrics import parse_metrics
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
