"""One epoch of training and one pass of evaluation, as torchvision's reference script has them.

`train_one_epoch` and `evaluate` are plain functions over a model, a loader and a device; job.py calls them
each epoch. Around them: the optimizer and scheduler the hyperparameters name, automatic mixed precision
(bfloat16 where the GPU has it, else float16 with a GradScaler), channels_last where it is faster, and the
SIGTERM flag (`StopRequested`) the loop checks after every step.
"""
import logging
import os
import random
import signal
import sys
import time

import numpy as np
import torch

from .. import constants
from .data import to_model_input
from .layout import DataError

log = logging.getLogger("image_classifier")

class StopRequested:
    """Set by SIGTERM (spot interruption, StopTrainingJob): the loop saves at the next step and exits.
    `stop_at_step` (tests): after that global step the job sends the SIGTERM itself, to its process group
    as the platform does, so a stop lands exactly where a test wants it."""

    def __init__(self, stop_at_step=0):
        self.requested = False
        self.stop_at_step = stop_at_step
        self.epoch_first_step = 0  # the global step number before the current epoch's first step

    def install(self):
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint at the end of this step, then exiting")
        self.requested = True

    def step_done(self, step_in_epoch):
        if self.stop_at_step and self.epoch_first_step + step_in_epoch == self.stop_at_step:
            log.warning("%s=%d: sending SIGTERM to the job", constants.STOP_AT_STEP_ENV, self.stop_at_step)
            self.requested = True  # the handler sets it too; this makes the stop step exact
            os.killpg(os.getpgrp(), signal.SIGTERM)



class ProgressLine:
    """The progress line inside an epoch: pictures done, images/s and the epoch's ETA, at most every `interval`
    seconds (constants.PROGRESS_SECONDS, or its environment variable). A plain line each time, so SageMaker's
    CloudWatch log stays readable; on a terminal the lines overwrite each other. `total`: the epoch's pictures
    over all ranks; rank 0 counts its own and scales by `world_size` (every rank takes the same steps)."""

    def __init__(self, epoch, epochs, total, world_size=1, interval=None, out=None):
        if interval is None:
            interval = float(os.environ.get(constants.PROGRESS_SECONDS_ENV, constants.PROGRESS_SECONDS))
        self.epoch, self.epochs, self.total, self.world_size, self.interval = epoch, epochs, total, world_size, interval
        self.out = out or sys.stdout
        self.started = self.last = time.monotonic()
        self.first_done = None  # pictures already done when this line started (a resumed epoch)

    def __call__(self, images_done):
        now = time.monotonic()
        done = images_done * self.world_size
        if self.first_done is None:
            self.first_done, self.started = done, now  # the rate counts from the first step (after the start-up)
            return
        if now - self.last < self.interval or done >= self.total:
            return
        self.last = now
        rate = (done - self.first_done) / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0
        end = "\r" if self.out.isatty() else "\n"
        self.out.write(f"{constants.PROGRESS_PREFIX}epoch {self.epoch}/{self.epochs}, {done:,}/{self.total:,} pictures, "
                       f"{rate:.1f} images/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}{end}")
        self.out.flush()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(hp, parameters):
    if hp.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=hp.lr, weight_decay=hp.weight_decay)
    return torch.optim.Adam(parameters, lr=hp.lr, weight_decay=hp.weight_decay)


def build_scheduler(hp, optimizer, total_steps):
    if hp.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if hp.lr_schedule == "step":  # divide by 10 at 1/2 and 3/4 of the run
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [total_steps // 2, total_steps * 3 // 4], 0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def amp_dtype(device):
    """bfloat16 where the GPU supports it (no loss scaling, float32's range), else float16."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def make_scaler(hp, device):
    """A GradScaler for float16 AMP; False for bfloat16 AMP (autocast, no scaler); None without AMP."""
    if not (hp.amp and device.type == "cuda"):
        return None
    return torch.amp.GradScaler("cuda") if amp_dtype(device) == torch.float16 else False


# channels_last: always on a GPU (tensor cores); on the CPU from this size, where a training step was 1.3x
# (ResNet-18, ResNet-50) to 2.5x (MobileNetV3-small) faster than in NCHW; at 32 px it was 0.8x (docs/BENCHMARKS.md).
CPU_CHANNELS_LAST_MIN_SIZE = 224


def use_channels_last(device, image_size):
    return device.type == "cuda" or image_size >= CPU_CHANNELS_LAST_MIN_SIZE


def model_input(images, device):
    """A batch on the device, normalised there when it came as uint8 (the decode cache), and channels_last
    where the model is (use_channels_last)."""
    images = to_model_input(images.to(device, non_blocking=True))
    return images.contiguous(memory_format=torch.channels_last) if use_channels_last(device, images.shape[-1]) \
        else images


def train_one_epoch(model, criterion, optimizer, scheduler, loader, device, scaler, progress, stop,
                    max_steps=0, on_step=None, on_progress=None):
    """One pass over `loader`. `progress` holds the running sums (restored from a mid-epoch checkpoint);
    `on_step(data_seconds=, compute_seconds=)` is told each step's timing (the profiler's system monitor),
    `on_progress(pictures done)` the epoch's progress (a ProgressLine).
    Returns True when the epoch ran to the end, False when a stop was requested."""
    model.train()
    amp = scaler is not None  # a GradScaler: float16 AMP; False: bfloat16 AMP (no scaling needed); None: no AMP
    waiting_since = time.perf_counter()  # the time until the loader yields is time spent waiting for data
    for images, labels, bad in loader:
        loaded = time.perf_counter()
        progress["bad"] += len(bad)
        for item in bad:  # already quoted for the log (data.BadPicture)
            log.warning("Skipping unreadable picture: %s", item)
        if len(labels):
            start = time.perf_counter()
            images, labels = model_input(images, device), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
                logits = model(images)
                loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            progress["loss"] += loss.item() * len(labels)
            progress["correct"] += (logits.argmax(1) == labels).sum().item()
            progress["images"] += len(labels)
            progress["seconds"] += time.perf_counter() - start
            if on_step is not None:
                on_step(data_seconds=start - waiting_since, compute_seconds=time.perf_counter() - start)
        progress["data_seconds"] = progress.get("data_seconds", 0.0) + loaded - waiting_since
        progress["wall_seconds"] = progress.get("wall_seconds", 0.0) + time.perf_counter() - waiting_since
        progress["step"] += 1
        if on_progress is not None:
            on_progress(progress["images"])
        stop.step_done(progress["step"])
        waiting_since = time.perf_counter()
        if stop.requested or (max_steps and progress["step"] >= max_steps):
            break
    return not stop.requested


@torch.inference_mode()
def evaluate(model, criterion, loader, device, amp=False, dist=None):
    """(loss, accuracy, bad picture count, predictions, labels) over a whole loader; with `dist`, over
    every rank's shard of it (sums reduced, predictions gathered), the same on every rank."""
    if dist is not None:
        dist.sync_buffers(model)  # every rank evaluates rank 0's BatchNorm statistics (those it saves)
    model.eval()
    total_loss, correct, count, bad = 0.0, 0, 0, 0
    predictions, targets = [], []
    for images, labels, bad_items in loader:
        bad += len(bad_items)
        if not len(labels):
            continue
        images, labels = model_input(images, device), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
            logits = model(images)
        total_loss += criterion(logits.float(), labels).item() * len(labels)
        predicted = logits.argmax(1)
        correct += (predicted == labels).sum().item()
        count += len(labels)
        predictions += predicted.cpu().tolist()
        targets += labels.cpu().tolist()
    if dist is not None:
        total_loss, correct, count, bad = dist.sum(total_loss, correct, count, bad)
        predictions, targets = dist.gather(predictions), dist.gather(targets)
    if count == 0:
        raise DataError("No readable pictures to evaluate on.")
    return total_loss / count, correct / count, bad, torch.tensor(predictions), torch.tensor(targets)



def new_progress():
    # seconds: computing; data_seconds: waiting for the loader; wall_seconds: both, and all else in the loop.
    return {"step": 0, "loss": 0.0, "correct": 0, "images": 0, "seconds": 0.0, "bad": 0, "data_seconds": 0.0,
            "wall_seconds": 0.0}


SUMMED_PROGRESS = ("loss", "correct", "images", "bad")  # each rank's own running sums within an epoch


def progress_over_ranks(dist, progress):
    """The epoch's running sums over every rank, as a checkpoint keeps them: rank 0 resumes with these and
    the other ranks with zeros, so a resumed epoch's train metrics count each picture once."""
    sums = dist.sum(*(progress[key] for key in SUMMED_PROGRESS))
    return {**progress, **dict(zip(SUMMED_PROGRESS, sums)), "seconds": dist.max(progress["seconds"])}

