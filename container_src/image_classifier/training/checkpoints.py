"""Checkpoints: everything a stopped job needs to go on exactly where it was.

A checkpoint holds the model, optimizer, scheduler, AMP scaler, every random generator, the global step,
the smdebug hook's step counters and the run's progress, so on CPU a stopped and resumed job ends with
exactly the weights of an uninterrupted one. It is written durably (contract.atomic_write) beside the
previous good one; a restart sets aside one that does not load and falls back to the previous. Only rank 0
writes; every rank reads what the first host read.
"""
import logging
import os
import random
import time

import numpy as np
import torch

from .. import constants
from ..contract import atomic_write
from ..metrics import quote_for_log
from ..model import load_weights, unwrap
from .layout import DataError
from .loop import SUMMED_PROGRESS, progress_over_ranks

log = logging.getLogger("image_classifier")

# What a checkpoint must hold to resume from it.
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "rng", "step", "state", "hyperparameters", "folders"}


def atomic_save(obj, path, keep_previous=None):
    atomic_write(path, lambda tmp: torch.save(obj, tmp), keep_previous)



def rng_states():
    """Every random generator the job could draw from (tensors and plain values only: weights_only loads it)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    keys = torch.from_numpy(keys.astype(np.int64))  # pragma: no mutate - float64 (astype(None)) holds uint32 exactly too
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (name, keys, position, has_gauss, cached)}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    keys = keys.numpy().astype(np.uint32)  # pragma: no mutate - set_state takes any dtype holding uint32 exactly
    np.random.set_state((name, keys, position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_checkpoint(folder):
    """(the newest checkpoint in `folder` that loads, its path), or (None, None). One that does not load
    (cut short, damaged, not a checkpoint, or a pickle that asks for code) is set aside with a warning,
    and the previous one is tried."""
    for path in (folder / constants.CHECKPOINT_FILE, folder / constants.PREVIOUS_CHECKPOINT_FILE):
        if not path.is_file():
            continue
        try:
            saved = load_weights(path)
            if not isinstance(saved, dict) or not CHECKPOINT_KEYS <= saved.keys():
                raise ValueError("not a checkpoint of this job (keys missing)")
            return saved, path
        except Exception as error:  # noqa: BLE001 - whatever the damage, the file is set aside, not fatal
            aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log.warning("The checkpoint %s does not load (%s); set aside as %s.", path,
                        quote_for_log(f"{type(error).__name__}: {error}"[:300]), aside.name)
    return None, None



def resume(job):
    """Continue from the newest checkpoint, if any (a restarted spot job finds it in the checkpoint folder):
    weights, optimizer, scheduler, scaler, random generators and progress. Returns the smdebug hook's saved
    position (None for a fresh run)."""
    # Read on the first host, sent to every rank (other hosts may have no copy).
    saved, saved_path = job.dist.from_master(lambda: load_checkpoint(job.checkpoint_dir))
    if saved is None:
        return None
    check_resumable(saved, job.hp, job.splits.folders, saved_path)
    job.model.load_state_dict(saved["model"])
    job.optimizer.load_state_dict(saved["optimizer"])
    job.scheduler.load_state_dict(saved["scheduler"])
    if job.scaler and saved.get("scaler"):
        job.scaler.load_state_dict(saved["scaler"])
    restore_rng_states(saved["rng"])
    job.state = saved["state"]
    if not job.dist.is_master:  # the saved sums are every rank's already (progress_over_ranks)
        progress = job.state["progress"]
        progress.update({key: type(progress[key])(0) for key in (*SUMMED_PROGRESS, "seconds")})
    log.info("Resuming from %s at global step %d (epoch %d, step %d of %d)", saved_path, saved["step"],
             job.state["epoch"] + 1, job.state["progress"]["step"], job.steps_per_epoch)
    return saved.get("debugger")



def save_checkpoint(job):
    state = {**job.state, "progress": progress_over_ranks(job.dist, job.state["progress"])}  # every rank takes part
    if job.dist.is_master:
        job.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        atomic_save({"model": unwrap(job.model).state_dict(), "optimizer": job.optimizer.state_dict(),
                      "scheduler": job.scheduler.state_dict(),
                      "scaler": job.scaler.state_dict() if job.scaler else None, "rng": rng_states(),
                      "step": job.global_step, "debugger": job.recorder.position(), "state": state,
                      "hyperparameters": job.hp.to_strings(), "folders": job.splits.folders},
                     job.checkpoint_path, keep_previous=job.checkpoint_dir / constants.PREVIOUS_CHECKPOINT_FILE)
    job.dist.barrier()  # no rank runs ahead (or exits) while rank 0 writes



def check_resumable(saved, hp, folders, path):
    ignored = {"workers", "epochs", "early-stopping-patience"}  # safe to change across a restart
    ours = hp.to_strings()
    changed = [k for k, v in saved["hyperparameters"].items() if k not in ignored and ours.get(k) != v]
    if changed or saved["folders"] != folders:
        what = ", ".join(f"{k}: {saved['hyperparameters'][k]} -> {ours.get(k)}" for k in changed) or "the classes"
        raise DataError(f"The checkpoint {path} belongs to another job ({what} differ). Use a new checkpoint "
                        "location, or delete it to start over.")

