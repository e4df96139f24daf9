"""The smdebug hook of the training job: which tensors are saved, where, and how often.

The hook is created from SageMaker's hook configuration (`debughookconfig.json`) when the job has one,
else from the hyperparameters (`debug-hook`, `debug-loss-interval`, `debug-tensor-interval`). It saves
the loss (and the labels, for the class-imbalance rule) every few steps, in TRAIN, EVAL (validation) and
PREDICT (test) modes, and the weights, gradients and biases only every `debug-tensor-interval` training
steps: saving all of a ResNet-50 costs about 180 MB and a second. smdebug ignores SAGEMAKER_BASE_DIR, so
every path it gets is explicit: `<output>/tensors` (SageMaker's LocalPath, /opt/ml/output/tensors).

A fresh job empties its tensors folder first (smdebug refuses one holding a finished run); a LocalPath that
would hold the job's input, model, checkpoints or code is refused rather than emptied. A resumed job keeps
the tensors and goes on numbering steps where the checkpoint left off, so the rules see the whole run.
"""
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from .. import constants, contract

log = logging.getLogger(__name__)

# smdebug logs every parameter it registers at INFO; its warnings are enough (set before it is imported).
os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")

# The loss module's second input is the batch's labels: saved with the loss for the class-imbalance rule.
LABELS_COLLECTION = "labels"
LABELS_REGEX = r"CrossEntropyLoss_input_1"
SPARSE_COLLECTIONS = ("weights", "gradients", "biases")
MODES = ("train", "eval", "predict")


# ------------------------------------------------------------------------------------- numpy shim
class _TostringArray(np.ndarray):
    """smdebug 1.0.34 serialises tensors with `ndarray.tostring()`, deprecated since numpy 1.19 and removed
    in numpy 2.3. A view of this subclass answers it with `tobytes()` (the same bytes, no copy)."""

    def tostring(self, order="C"):
        return self.tobytes(order)


def install_numpy_compat():
    """Route smdebug's tensor serialisation through `_TostringArray`; idempotent."""
    from smdebug.core import writer
    from smdebug.core.tfevent import util

    if getattr(writer.make_tensor_proto, "numpy_compat", False):
        return
    original = util.make_tensor_proto

    def make_tensor_proto(nparray_data, tag):
        return original(np.asarray(nparray_data).view(_TostringArray), tag)

    make_tensor_proto.numpy_compat = True
    util.make_tensor_proto = writer.make_tensor_proto = make_tensor_proto


# ----------------------------------------------------------------------------------------- the hook
def tensors_dir(env):
    return Path(os.environ.get(constants.TENSORS_DIR_ENV) or env.output_dir / contract.TENSORS_FOLDER)


def _local_config_file(env):
    """SageMaker's hook config with its LocalPath moved under this job's base folder (a local run's
    SAGEMAKER_BASE_DIR is not /opt/ml, and smdebug would write to /opt/ml otherwise)."""
    config = json.loads(Path(env.debug_hook_config).read_text())
    local = Path(config.get("LocalPath") or contract.CONTAINER_PATHS.tensors)
    if local.is_relative_to(contract.CONTAINER_PATHS.base) and local != contract.CONTAINER_PATHS.base:
        local = env.base_dir / local.relative_to(contract.CONTAINER_PATHS.base)
    config["LocalPath"] = str(local)
    target = env.output_dir / "debughookconfig.effective.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(config))
    return target, local


def _sparse_save_config(interval):
    """Every `interval` training steps (step 0 included); never in validation or test."""
    from smdebug.core.modes import ModeKeys
    from smdebug.core.save_config import SaveConfig, SaveConfigMode

    never = SaveConfigMode(save_interval=1, end_step=0)
    return SaveConfig({ModeKeys.TRAIN: SaveConfigMode(save_interval=interval), ModeKeys.EVAL: never,
                       ModeKeys.PREDICT: never, ModeKeys.GLOBAL: never})


class DebuggerConfigError(ValueError):
    """The Debugger hook configuration cannot be used as given; the message says why."""


def create_hook(env, hp, resume=None):
    """The smdebug hook for this job, or None when `debug-hook=false`. `resume`: the hook's position saved
    in the checkpoint (`TensorRecorder.position`); the saved tensors are then kept and continued."""
    if not hp.debug_hook:
        if env.debug_hook_config is not None:
            log.info("debug-hook=false: ignoring the job's Debugger hook configuration")
        return None
    install_numpy_compat()
    import smdebug.pytorch as smd

    if env.debug_hook_config is not None:
        config_file, out_dir = _local_config_file(env)
        source = f"the job's Debugger configuration ({env.debug_hook_config})"
    else:
        config_file, out_dir = None, tensors_dir(env)
        source = (f"hyperparameters (losses every {hp.debug_loss_interval} steps, weights/gradients/biases every "
                  f"{hp.debug_tensor_interval} training steps)")
    _prepare(env, out_dir, resume)
    if config_file is not None:
        hook = smd.Hook.create_from_json_file(str(config_file))
    else:
        hook = smd.Hook(out_dir=str(out_dir), save_config=smd.SaveConfig(save_interval=hp.debug_loss_interval),
                        include_collections=["losses", *SPARSE_COLLECTIONS])
        for name in SPARSE_COLLECTIONS:
            hook.get_collection(name).save_config = _sparse_save_config(hp.debug_tensor_interval)
    labels = hook.get_collection(LABELS_COLLECTION)
    labels.include(LABELS_REGEX)
    hook.include_collections = list(dict.fromkeys([*hook.include_collections, LABELS_COLLECTION]))
    if resume:
        _restore_position(hook, resume)
    log.info("smdebug hook: tensors to %s, from %s%s", out_dir, source,
             f"; resumed after step {resume['step']}" if resume else "")
    return hook


def _protected_folders(env):
    """What a tensors folder must never be, hold or sit in: the job's input, model, checkpoints and code."""
    return [Path(p).resolve() for p in (env.input_dir, env.model_dir, env.checkpoint_dir, env.paths.code)]


def check_tensors_dir(env, out_dir):
    """Refuse a tensors folder that overlaps the job's own data: it is emptied at the start of a job."""
    out = Path(out_dir).resolve()
    for folder in _protected_folders(env):
        if out == folder or out in folder.parents or folder in out.parents:
            raise DebuggerConfigError(
                f"The Debugger LocalPath {out_dir} {'is' if out == folder else 'overlaps'} {folder}, which holds "
                f"the job's own files; the tensors folder is emptied when a job starts. Use a folder of its own, "
                f"such as {contract.CONTAINER_PATHS.tensors}.")
    for folder in (env.base_dir.resolve(), env.output_dir.resolve(), Path(out.anchor)):
        if out == folder:
            raise DebuggerConfigError(f"The Debugger LocalPath {out_dir} is the job's {folder} itself; use a "
                                      f"folder of its own, such as {contract.CONTAINER_PATHS.tensors}.")


def _prepare(env, out_dir, resume):
    check_tensors_dir(env, out_dir)
    if not out_dir.exists():
        return
    if resume:
        # smdebug refuses a folder that holds a finished run: the stopped run's end mark goes, its tensors stay.
        from smdebug.core.access_layer.utils import END_OF_JOB_FILENAME

        (out_dir / END_OF_JOB_FILENAME).unlink(missing_ok=True)
        return
    # A fresh job: the tensors of an earlier run in this folder would mix with this one's.
    log.warning("Removing the tensors of a previous run in %s", out_dir)
    shutil.rmtree(out_dir)


def _restore_position(hook, position):
    from smdebug.core.modes import ModeKeys

    hook.step = position["step"]  # init_step stays: a mode first used after the restart starts at 0
    hook.mode_steps = {ModeKeys[mode]: step for mode, step in position["mode_steps"].items()}


# Collections saved without a forward hook on every layer: parameters are read at the step's start, gradients
# by hooks on the parameters, the loss and the labels by the loss module's hook.
_PARAMETER_COLLECTIONS = {"losses", "weights", "gradients", "biases", LABELS_COLLECTION, "default"}


def register_model(hook, model):
    """`hook.register_module(model)` without the per-layer forward hooks when no saved collection needs
    layer inputs or outputs: smdebug's hooks time every layer of every step even when they save nothing,
    which is most of the hook's cost. A configuration that asks for layer outputs gets the full hooks."""
    if not set(hook.include_collections) <= _PARAMETER_COLLECTIONS:
        hook.register_module(model)
        return
    for name, module in model.named_modules():
        module._module_name = name  # what smdebug names tensors after
        hook.module_set.add(module)
    model._module_name = model._get_name()
    model.register_forward_pre_hook(hook.forward_pre_hook)  # counts steps, saves the weights on saving steps
    hook._backward_apply(model)  # the gradients
    hook.has_registered_module = True


class TensorRecorder:
    """What the training loop sees of the hook: register once, switch modes, close. A recorder without a
    hook (`debug-hook=false`) does nothing, so the loop has no conditionals."""

    def __init__(self, hook=None, out_dir=None):
        self.hook = hook
        self.out_dir = Path(out_dir) if out_dir else None
        self.closed = False

    @classmethod
    def start(cls, env, hp, model, criterion, resume=None):
        hook = create_hook(env, hp, resume)
        if hook is None:
            return cls()
        register_model(hook, model)
        hook.register_loss(criterion)
        return cls(hook, hook.out_dir)

    def position(self):
        """The hook's step counters, saved in the checkpoint so a resumed job continues the numbering."""
        if self.hook is None:
            return None
        return {"step": self.hook.step, "mode_steps": {mode.name: step for mode, step in self.hook.mode_steps.items()}}

    def set_mode(self, mode):
        """'train', 'eval' (validation) or 'predict' (test)."""
        if self.hook is not None:
            from smdebug import modes

            self.hook.set_mode({"train": modes.TRAIN, "eval": modes.EVAL, "predict": modes.PREDICT}[mode])

    def close(self):
        """Flush and mark the run ended (rules and readers wait for that mark); idempotent."""
        if self.hook is not None and not self.closed:
            self.closed = True
            self.hook.close()
