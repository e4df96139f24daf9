"""Runs the debugging tests share: small in-process training runs through the project's own loop
(train_one_epoch / evaluate / TensorRecorder), each crafted to go wrong in one way, and one real job."""
import functools
import os
from pathlib import Path

import torch

from conftest import train_job

CLASS_MEANS = torch.tensor([[2.0, -1.0, -1.0], [-1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])
# The crafted runs' torch settings, so the rules tests can be run under other ones (scripts/rules_matrix.sh):
# intra-op threads (default 1: fastest on a busy 2-core machine) and deterministic algorithms on or off.
THREADS_ENV, DETERMINISTIC_ENV = "RULES_TEST_THREADS", "RULES_TEST_DETERMINISTIC"
# The real job the hook, rules and report tests read: tiny, 3 epochs, hook and profiler on.
HEALTHY_JOB_HPS = {"epochs": "3", "batch-size": "4", "augment": "none", "profile": "true",
                   "profile-start-step": "2", "profile-steps": "3"}


@functools.cache
def healthy_job(root):
    """The real training job (toolkit `train` subprocess), run once per test session."""
    job, exit_code = train_job(Path(root), HEALTHY_JOB_HPS, name="healthy")
    assert exit_code == 0, job.log_file.read_text()[-3000:]
    return job


def batches(counts, size=16, batch=4, seed=0, labels_of=None):
    """[(images, labels, [])] like the job's loaders: class c is a noisy picture of colour CLASS_MEANS[c].
    `counts`: pictures per class; `labels_of` relabels (to make validation disagree with training)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    images = CLASS_MEANS[labels][:, :, None, None] + torch.randn(len(labels), 3, size, size, generator=generator)
    if labels_of is not None:
        labels = torch.tensor([labels_of[int(c)] for c in labels])
    return [(images[i:i + batch], labels[i:i + batch], []) for i in range(0, len(labels), batch)]


def crafted_run(out, *, epochs=3, lr=0.001, optimizer="adam", train=(12, 12, 12), valid=(6, 6, 6),
                valid_seed=2, valid_labels=None, weight_scale=None, trainable_layers=4, tensor_interval=5):
    """Train a ResNet-18 (16 px) in this process with the hook on; returns the tensors folder.
    `valid_seed=1` with `valid=train` validates on the training pictures themselves."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))
    torch.use_deterministic_algorithms(os.environ.get(DETERMINISTIC_ENV, "0") == "1")
    try:
        return _crafted_run(out, epochs, lr, optimizer, train, valid, valid_seed, valid_labels, weight_scale,
                            trainable_layers, tensor_interval)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _crafted_run(out, epochs, lr, optimizer, train, valid, valid_seed, valid_labels, weight_scale, trainable_layers,
                 tensor_interval):
    from image_classifier.training import loop
    from image_classifier.training.hyperparameters import Hyperparameters
    from image_classifier.diagnostics.debugger_hook import TensorRecorder
    from image_classifier.training.environment import TrainingEnvironment
    from image_classifier.model import build_model, set_trainable

    torch.manual_seed(0)
    out = Path(out)
    env = TrainingEnvironment(base_dir=out, model_dir=out / "model", output_dir=out / "output",
                              output_data_dir=out / "output" / "data", checkpoint_dir=out / "checkpoints")
    hp = Hyperparameters(arch="resnet18", pretrained=False, lr=lr, optimizer=optimizer, lr_schedule="constant",
                         debug_tensor_interval=tensor_interval)
    model = build_model("resnet18", len(train))
    if weight_scale is not None:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.ndim > 1:
                    parameter.mul_(weight_scale)
    set_trainable(model, trainable_layers, "resnet18")
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = loop.build_optimizer(hp, [p for p in model.parameters() if p.requires_grad])
    scheduler = loop.build_scheduler(hp, optimizer, 1)
    train_batches, valid_batches = batches(train, seed=1), batches(valid, seed=valid_seed, labels_of=valid_labels)
    # Settle the batch-norm statistics first: a tiny run's validation would otherwise be dominated by them.
    with torch.no_grad():
        for images, _, _ in train_batches * 3:
            model(images)
    recorder = TensorRecorder.start(env, hp, model, criterion)
    stop = loop.StopRequested()
    for _ in range(epochs):
        recorder.set_mode("train")
        loop.train_one_epoch(model, criterion, optimizer, scheduler, train_batches, torch.device("cpu"), None,
                                 loop.new_progress(), stop)
        recorder.set_mode("eval")
        loop.evaluate(model, criterion, valid_batches, torch.device("cpu"))
    recorder.close()
    return recorder.out_dir
