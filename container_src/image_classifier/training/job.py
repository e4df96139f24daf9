"""The training job: fine-tune a ResNet on image folders, as a SageMaker training job.

Run by sagemaker-training's `train` (through /opt/ml/code/train.py and toolkit_entry.py) or directly
(`python -m image_classifier.training.job`). Reads the job from `TrainingEnvironment`, prints one metric line
per epoch and one at the end (format: metrics.py), writes `model.pth` + `model.json` to the model folder,
checkpoints every epoch and on SIGTERM (checkpoints.py) so a restarted job resumes where it stopped, and on
any error writes a short reason to the failure file (/opt/ml/output/failure).

`run` goes through the stages of torchvision's reference script, as plain functions sharing one
`TrainingRun`: `set_up` (seeds, data, model, optimizer), `resume` (the checkpoint, if any), `train_epochs`
(loop.train_one_epoch, then validation and a checkpoint per epoch) and `finish` (test, artifact, rules).
"""
import contextlib
import json
import logging
import math
import os
import sys
import traceback
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import constants
from ..contract import FAILURE_MAX_BYTES
from ..cuda_check import GpuUnusableError
from ..diagnostics.debugger_hook import DebuggerConfigError, TensorRecorder
from ..diagnostics.profiling import Profiling
from ..images import eval_resize
from ..metrics import format_metrics, quote_for_log
from ..model import (ArtifactError, ModelConfig, PretrainedWeightsError, build_model, load_weights,
                     pretrained_state, save_artifact, set_trainable, unwrap)
from ..preprocessing import build_transforms
from . import decode_cache
from .cpu_share import CpuShare
from .checkpoints import atomic_save, resume, save_checkpoint
from .data import EpochSampler, PictureDataset, make_loader
from .distributed import Distributed
from .environment import EnvironmentConfigError, TrainingEnvironment, failure_file
from .hyperparameters import HyperparameterError, Hyperparameters
from .layout import DataError, Splits, load_splits
from .quantize import quantize_job
from .loop import (ProgressLine, StopRequested, amp_dtype, build_optimizer, build_scheduler, evaluate, make_scaler, new_progress,
                   seed_everything, train_one_epoch, use_channels_last)

log = logging.getLogger("image_classifier")

# Errors that are the user's to fix: reported in one line, without a traceback.
USER_ERRORS = (HyperparameterError, DataError, PretrainedWeightsError, ArtifactError, EnvironmentConfigError,
               DebuggerConfigError, GpuUnusableError)


def cpus_per_process(env):
    """The host's vCPUs shared among its training processes (one per GPU under torchrun)."""
    return max(env.num_cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


@dataclass
class TrainingRun:
    """What `set_up` builds and the later stages (resume, the epoch loop, finish) share, in place of the
    locals of one long function. `state` is the run's progress, saved in every checkpoint."""

    env: TrainingEnvironment
    hp: Hyperparameters
    dist: Distributed
    stop: StopRequested  # agreed across ranks (Distributed.agreed)
    splits: Splits
    model: nn.Module
    train_model: nn.Module  # the model as trained: wrapped for data parallel
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | bool | None  # make_scaler
    train_sampler: EpochSampler
    train_loader: torch.utils.data.DataLoader
    eval_transform: object
    workers: int
    steps_per_epoch: int
    state: dict = field(default_factory=lambda: {"epoch": 0, "progress": new_progress(), "history": [],
                                                 "best_valid_loss": math.inf, "best_epoch": 0,
                                                 "epochs_without_improvement": 0})
    recorder: TensorRecorder = field(default_factory=TensorRecorder)  # a real one on rank 0 (start_recording)
    profiling: Profiling | None = None  # rank 0's system monitor (and profiler window); None on other ranks
    epoch_mark: int = 0  # the monitor's sample index at the current epoch's start
    caches: dict = field(default_factory=dict)  # split -> decode_cache.DecodeCache, when decode-cache is on
    cpu_share: CpuShare | None = None  # a CPU job alone on its host gives way to other processes (cpu_share.py)

    @property
    def device(self):
        return self.dist.device

    @property
    def amp(self):
        return self.hp.amp and self.device.type == "cuda"

    @property
    def checkpoint_dir(self):
        return self.env.job_checkpoint_dir  # this job's own sub-folder when it has a name (TRAINING_JOB_NAME)

    @property
    def checkpoint_path(self):
        return self.checkpoint_dir / constants.CHECKPOINT_FILE

    @property
    def best_path(self):
        return self.checkpoint_dir / constants.BEST_WEIGHTS_FILE

    @property
    def global_step(self):
        return self.state["epoch"] * self.steps_per_epoch + self.state["progress"]["step"]

    @property
    def scan_bad(self):
        """Pictures found unreadable at scan time (skipped)."""
        return sum(len(files) for files in self.splits.bad_files.values())

    def eval_loader(self, split):
        cache = self.caches.get(split)
        transform = decode_cache.CachedTransform(self.hp.image_size, "none", train=False) if cache else self.eval_transform
        dataset = PictureDataset(self.splits.samples[split], transform, self.hp.seed,
                                 min_side=eval_resize(self.hp.image_size), cache=cache)
        sampler = EpochSampler(len(dataset), self.hp.seed, shuffle=False, rank=self.dist.rank,
                               world_size=self.dist.world_size)
        return make_loader(dataset, sampler, self.hp.batch_size, self.workers, self.device.type == "cuda")


def run(env, hp):
    """The whole job; returns the process exit code. Every way out closes the profiler and the tensor
    recorder (a SIGTERM stop and an error too), so system metrics and the tensors' end mark are written."""
    with contextlib.ExitStack() as cleanup:
        job = set_up(env, hp)
        debugger_position = resume(job)
        start_recording(job, debugger_position, cleanup)
        if not train_epochs(job):
            return constants.SIGTERM_EXIT_CODE
        return finish(job)


def set_up(env, hp):
    """Seeds, data, model, loaders, optimizer: what a fresh run starts from (and a resumed one overwrites)."""
    stop = StopRequested(env.stop_at_step).install()
    dist = Distributed.from_environment(env)
    stop = dist.agreed(stop)  # every rank stops at the same step
    device = dist.device
    seed_everything(hp.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)

    splits = load_splits(env.channels, hp.on_bad_image)
    classes = splits.classes
    # Class names are data: quoted, so no folder name can write a metric line of its own.
    log.info("Classes: %d (%s%s); pictures: %s", len(classes), ", ".join(quote_for_log(c) for c in classes[:5]),
             ", ..." if len(classes) > 5 else "",
             ", ".join(f"{split} {len(s)}" for split, s in splits.samples.items()))

    backbone = None
    if hp.pretrained:
        backbone = pretrained_state(hp.arch, env.channels.get(constants.PRETRAINED_CHANNEL), hp.weights_download)
    model = build_model(hp.arch, len(classes), backbone)
    set_trainable(model, hp.trainable_layers, hp.arch)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info("%s: %.1fM parameters, %.1fM trainable, on %s", hp.arch,
             sum(p.numel() for p in model.parameters()) / 1e6, sum(p.numel() for p in trainable) / 1e6, device)

    train_transform, eval_transform = build_transforms(hp.image_size, hp.augment)
    workers = default_workers(env, device) if hp.workers < 0 else hp.workers
    caches = make_caches(hp, splits)
    if caches:
        train_transform = decode_cache.CachedTransform(hp.image_size, hp.augment, train=True)
    train_set = PictureDataset(splits.samples["train"], train_transform, hp.seed, min_side=eval_resize(hp.image_size),
                               cache=caches.get("train"))
    train_sampler = EpochSampler(len(train_set), hp.seed, shuffle=True, rank=dist.rank, world_size=dist.world_size)
    # BatchNorm cannot train on a last batch of one picture.
    drop_last = len(train_sampler) % hp.batch_size == 1
    train_loader = make_loader(train_set, train_sampler, hp.batch_size, workers, device.type == "cuda", drop_last)

    steps_per_epoch = len(train_loader)
    if hp.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, hp.max_steps_per_epoch)
    optimizer = build_optimizer(hp, trainable)
    scheduler = build_scheduler(hp, optimizer, steps_per_epoch * hp.epochs)
    scaler = make_scaler(hp, device)
    if use_channels_last(device, hp.image_size):
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        log.info("GPU: channels_last, %s, %d loader workers, pinned memory",
                 f"AMP {str(amp_dtype(device)).removeprefix('torch.')}" if scaler is not None else "no AMP", workers)
    criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    return TrainingRun(env=env, hp=hp, dist=dist, stop=stop, splits=splits, model=model, train_model=dist.wrap(model),
                       criterion=criterion, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                       train_sampler=train_sampler, train_loader=train_loader, eval_transform=eval_transform,
                       workers=workers, steps_per_epoch=steps_per_epoch, caches=caches)


def default_workers(env, device):
    """Loader workers for workers=-1: on a GPU, the vCPUs each training process has (vCPUs per GPU) less one
    for the process itself; on CPU, one per vCPU; at most 16."""
    if device.type == "cuda":
        return min(max(cpus_per_process(env) - 1, 1), 16)
    return min(env.num_cpus, 8)


def make_caches(hp, splits):
    """{split: DecodeCache} when decode-cache is on (or auto and it fits in memory), else {}."""
    side = eval_resize(hp.image_size)
    if hp.decode_cache == "off":
        decode_cache.decide("off", [], side)
        return {}
    shapes = {split: decode_cache.header_shapes([path for path, _ in samples], side)
              for split, samples in splits.samples.items()}
    # Data-parallel ranks each keep a file for the whole split, but a sparse one holding only their own shard's
    # pictures: together, one copy of the set.
    if not decode_cache.decide(hp.decode_cache, list(shapes.values()), side):
        return {}
    return {split: decode_cache.DecodeCache([path for path, _ in splits.samples[split]], side, shapes[split])
            for split in splits.samples}


def start_recording(job, debugger_position, cleanup):
    """smdebug (losses, weights, gradients; a resumed job continues the saved tensors), the system monitor and
    (profile=true) torch.profiler, on rank 0 only; `cleanup` closes them on every way out."""
    if not job.dist.is_master:
        return
    job.recorder = TensorRecorder.start(job.env, job.hp, job.model, job.criterion, debugger_position)
    cleanup.callback(job.recorder.close)
    job.profiling = Profiling.start(job.hp, job.env.output_data_dir, job.device)
    cleanup.callback(job.profiling.close)
    if job.device.type == "cpu" and job.dist.world_size == 1 and os.environ.get(constants.GIVE_WAY_ENV) == "1":
        job.cpu_share = CpuShare()


def on_step(job):
    """What is told of each training step: the system monitor, and the CPU share when the job gives way."""
    if job.cpu_share is None:
        return job.profiling
    def told(**timing):
        if job.profiling is not None:
            job.profiling(**timing)
        job.cpu_share.step()
    return told


def train_epochs(job):
    """The epoch loop, from where `job.state` says, with a checkpoint after each epoch. False when SIGTERM
    stopped it (the checkpoint is saved first); True when the epochs ran out or early stopping ended them."""
    hp, state = job.hp, job.state
    valid_loader = job.eval_loader("valid")
    for epoch in range(state["epoch"], hp.epochs):
        progress = state["progress"]
        job.train_sampler.set_epoch(epoch, start=progress["step"] * hp.batch_size)
        job.stop.epoch_first_step = epoch * job.steps_per_epoch
        job.recorder.set_mode("train")
        start_epoch_measures(job)
        pictures = min(job.steps_per_epoch * hp.batch_size, len(job.train_sampler) + job.train_sampler.start)
        progress_line = ProgressLine(epoch + 1, hp.epochs, pictures * job.dist.world_size, job.dist.world_size) \
            if job.dist.is_master else None
        finished = train_one_epoch(job.train_model, job.criterion, job.optimizer, job.scheduler, job.train_loader,
                                   job.device, job.scaler, progress, job.stop, job.steps_per_epoch,
                                   on_step=on_step(job), on_progress=progress_line)
        if not finished:
            save_checkpoint(job)
            log.warning("Stopped by SIGTERM in epoch %d at step %d (global step %d); checkpoint saved to %s. "
                        "Restart the job with the same checkpoint folder to resume.",
                        epoch + 1, progress["step"], job.global_step, job.checkpoint_path)
            return False
        end_epoch(job, epoch, valid_loader)
        save_checkpoint(job)
        if hp.early_stopping_patience and state["epochs_without_improvement"] >= hp.early_stopping_patience:
            log.info("Early stopping: valid_loss has not improved for %d epochs", hp.early_stopping_patience)
            break
        if job.stop.requested:
            log.warning("Stopped by SIGTERM after epoch %d; checkpoint saved.", epoch + 1)
            return False
    return True


def end_epoch(job, epoch, valid_loader):
    """Validate, print the epoch's metric lines, keep the best weights so far, and move the state on to the
    next epoch."""
    state, progress, dist = job.state, job.state["progress"], job.dist
    job.recorder.set_mode("eval")
    valid_loss, valid_acc, valid_bad, _, _ = evaluate(job.model, job.criterion, valid_loader, job.device, job.amp,
                                                      dist)
    loss_sum, correct, seen, train_bad = dist.sum(progress["loss"], progress["correct"], progress["images"],
                                                  progress["bad"])
    images = max(seen, 1)
    waited, wall = dist.sum(progress.get("data_seconds", 0.0), progress.get("wall_seconds", 0.0))
    line = {"epoch": epoch + 1, "train_loss": loss_sum / images, "train_acc": correct / images,
            "valid_loss": valid_loss, "valid_acc": valid_acc,
            "images_per_sec": seen / max(dist.max(progress["seconds"]), 1e-9),
            "bad_images": job.scan_bad + train_bad + valid_bad,
            "wall_images_per_sec": seen / max(dist.max(progress.get("wall_seconds", 0.0)), 1e-9),
            "data_wait_share": waited / max(wall, 1e-9)}
    line.update(gpu_epoch_metrics(job))
    taken = job.cpu_share.taken() if job.cpu_share else None
    # The cores other processes kept busy: printed with the epoch, not kept in the run's history (a figure of
    # the machine, not of the run, which resumes bit for bit).
    machine = {"cpu_taken_elsewhere": taken} if taken is not None else {}
    if dist.is_master:
        print(format_metrics(**line, **machine), flush=True)
    state["history"].append(line)
    if valid_loss < state["best_valid_loss"]:
        state.update(best_valid_loss=valid_loss, best_epoch=epoch + 1, epochs_without_improvement=0)
        if dist.is_master:
            job.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            atomic_save(unwrap(job.model).state_dict(), job.best_path)
    else:
        state["epochs_without_improvement"] += 1
    if dist.is_master:  # the model this job saves (best valid_loss): the tuner's objective reads its last line
        best = state["history"][state["best_epoch"] - 1]
        print(format_metrics(best_valid_loss=best["valid_loss"], best_valid_acc=best["valid_acc"]), flush=True)
    state.update(epoch=epoch + 1, progress=new_progress())


def gpu_epoch_metrics(job):
    """On a GPU job: the GPU's mean utilisation over the epoch's training (the system monitor, rank 0) and
    its peak allocated memory; {} on CPU."""
    if job.device.type != "cuda":
        return {}
    utilization = job.profiling.monitor.gpu_utilization(job.epoch_mark) if job.profiling else None
    return {"gpu_utilization": -1.0 if utilization is None else utilization,  # -1: NVML unavailable
            "gpu_peak_memory_mb": torch.cuda.max_memory_allocated(job.device) / 2**20}


def start_epoch_measures(job):
    """Where this epoch's GPU measures start (the monitor's samples, the allocator's peak)."""
    job.epoch_mark = job.profiling.monitor.mark() if job.profiling else 0
    if job.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(job.device)


def run_profiler_rules(job):
    """The profiler rules over the system monitor and the step timings (rank 0): one metric line each, a
    log line for each that fired; returns their results (None without a monitor)."""
    if job.profiling is None:
        return None
    from ..diagnostics.profiler_rules import print_rule_metrics, run_profiler_rules as judge

    results = judge(job.profiling.profile_data(job.workers, job.hp.batch_size, cpus_per_process(job.env)))
    for result in results:
        log.log(logging.WARNING if result["status"] == "triggered" else logging.INFO, "Profiler rule %s %s: %s%s",
                result["rule"], result["status"].upper(), result["finding"],
                f" Recommendation: {result['recommendation']}" if result["status"] == "triggered" else "")
    print_rule_metrics(results)
    return results


def finish(job):
    """Test once with the best-valid weights, then (rank 0) the metric lines, predictions, the model artifact
    and the end-of-training rules. Returns the exit code."""
    env, hp, dist, state, classes = job.env, job.hp, job.dist, job.state, job.splits.classes
    if job.profiling is not None:
        job.profiling.close()  # the system metrics cover training, not the final test
    profiler_results = run_profiler_rules(job)
    # Each rank tests on its shard, with the best-valid weights (saved on the first host).
    best = dist.from_master(lambda: load_weights(job.best_path) if job.best_path.is_file() else None)
    if best is not None:
        job.model.load_state_dict(best)
    metrics = {"best_epoch": state["best_epoch"], "valid_loss": state["best_valid_loss"],
               "bad_images": state["history"][-1]["bad_images"]}
    tested = "test" in job.splits.samples
    if tested:
        job.recorder.set_mode("predict")
        test_loss, test_acc, test_bad, predictions, targets = evaluate(job.model, job.criterion,
                                                                       job.eval_loader("test"), job.device, job.amp,
                                                                       dist)
    if not dist.is_master:  # only rank 0 writes the metric lines and the model
        return 0
    if tested:
        print(format_metrics(test_loss=test_loss, test_acc=test_acc), flush=True)
        metrics.update(test_loss=test_loss, test_acc=test_acc, bad_images=metrics["bad_images"] + test_bad)
        _write_predictions(env.output_data_dir, predictions, targets, classes)
    else:
        log.warning("No test split: skipping the final test.")
    config = ModelConfig(arch=hp.arch, classes=classes, image_size=hp.image_size,
                         hyperparameters=hp.to_strings(), metrics=metrics)
    save_artifact(env.model_dir, job.model, config)
    log.info("Saved the model to %s", env.model_dir)
    quantize_job(job, env.model_dir)
    run_end_of_training_rules(job.recorder, env, hp, len(classes), profiler_results)
    return 0


def run_end_of_training_rules(recorder, env, hp, num_classes, profiler_results=None):
    """Close the hook, then run the rules over its tensors (output/data/rules.json, metric lines), with the
    profiler rules' results beside them. A rule that breaks is logged, never fails the job: the model is
    already saved and the rules only diagnose."""
    from ..diagnostics.profiler_rules import write_rules_file

    recorder.close()
    rules_file = env.output_data_dir / constants.RULES_FILE
    if not hp.rules or recorder.out_dir is None:
        if profiler_results is not None:
            write_rules_file(rules_file, profiler_rules=profiler_results)
        return None
    from ..diagnostics.debugger_rules import report_rules, run_rules  # smdebug's rule machinery: only when used

    try:
        results = run_rules(recorder.out_dir, parameters={"ClassImbalance": {"num_classes": num_classes}})
    except Exception:  # noqa: BLE001 - see above
        log.exception("The debugging rules could not run")
        write_rules_file(rules_file, profiler_rules=profiler_results)
        return None
    report_rules(results, rules_file, recorder.out_dir, profiler_results)
    return results


def _write_predictions(folder, predictions, targets, classes):
    """The test predictions, for reports (confusion matrix, per-class accuracy)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_predictions.json").write_text(json.dumps(
        {"classes": classes, "predicted": predictions.tolist(), "actual": targets.tolist()}))


def write_failure(path, message):
    """The reason SageMaker shows (FailureReason): its first 1 KB, cut on a character boundary."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(message.encode("utf-8")[:FAILURE_MAX_BYTES].decode("utf-8", "ignore").encode())
    except OSError:  # pragma: no cover - nothing more can be done
        log.exception("Could not write the failure file")


def out_of_memory(error):
    """A reason for an allocation failure (CPU or GPU), else None."""
    text = str(error)
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
            isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                                 or "is killed by signal: Killed" in text)):
        return (f"Out of memory ({type(error).__name__}: {text[:300]}). Lower batch-size, image-size or workers, "
                "or use an instance type with more memory.")
    return None


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    failure = failure_file()  # from SAGEMAKER_BASE_DIR alone: reachable whatever else is malformed
    try:
        failure.unlink(missing_ok=True)  # left by an interrupted earlier run of this job
        env = TrainingEnvironment.read()
        hp = Hyperparameters.from_strings(env.hyperparameters)
        log.info("Hyperparameters: %s", " ".join(f"{k}={v}" for k, v in hp.to_strings().items()))
        if hp.preset:
            log.info("Preset: %s", hp.preset)
        exit_code = run(env, hp)
        if exit_code == constants.SIGTERM_EXIT_CODE:
            write_failure(failure, "Stopped by SIGTERM; the checkpoint is saved and a restarted job resumes from it.")
        return exit_code
    except USER_ERRORS as error:
        log.error("%s", error)
        write_failure(failure, str(error))
        return 2
    except Exception as error:  # noqa: BLE001 - every failure must reach the failure file
        traceback.print_exc()
        write_failure(failure, out_of_memory(error) or f"{type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
