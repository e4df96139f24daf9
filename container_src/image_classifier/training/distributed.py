"""Data-parallel set-up. torchrun (started by `toolkit_entry`) starts the processes; this joins them.

A single process is the default: rank 0 of 1, on the first GPU if there is one. Under torchrun
(WORLD_SIZE/RANK/LOCAL_RANK set) the job joins a process group (NCCL on GPU, gloo on CPU) whose rank 0
runs on the first host, wraps the model in DistributedDataParallel, and uses the helpers below so that
every rank takes the same decisions: sums reduced over ranks, a stop agreed by all, state sent from
rank 0. Every collective has a timeout, so a dead or stuck rank fails the job instead of hanging it.
"""
import datetime
import os
from dataclasses import dataclass

import torch

from ..cuda_check import require_usable_gpu

# Seconds a collective may wait for the other ranks before the job fails (a dead or stuck rank).
COLLECTIVE_TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = "IMAGE_CLASSIFIER_COLLECTIVE_TIMEOUT", 600


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_master(self):
        return self.rank == 0

    @classmethod
    def from_environment(cls, env):
        """Fails with GpuUnusableError where the host has GPUs that torch cannot use (cuda_check)."""
        require_usable_gpu()
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and env.num_gpus > 0
        device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if world_size > 1 and not torch.distributed.is_initialized():
            if cuda:
                torch.cuda.set_device(device)
            timeout = int(os.environ.get(COLLECTIVE_TIMEOUT_ENV) or DEFAULT_COLLECTIVE_TIMEOUT_SECONDS)
            torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                                 timeout=datetime.timedelta(seconds=timeout))
        return cls(int(os.environ.get("RANK", "0")), world_size, device)

    def wrap(self, model):
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ---- collectives: no-ops in a single process; called by every rank in the same order
    def sum(self, *values):
        """Each value summed over ranks (float64, so counts and sums of losses stay exact enough)."""
        if self.world_size == 1:
            return values
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tuple(type(v)(t) for v, t in zip(values, tensor.tolist()))

    def max(self, value):
        if self.world_size == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        if self.device.type == "cuda":
            tensor = tensor.to(self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return type(value)(tensor.item())

    def any(self, flag):
        return bool(self.max(int(bool(flag))))

    def gather(self, items):
        """Every rank's list, concatenated in rank order (on every rank)."""
        if self.world_size == 1:
            return list(items)
        lists = [None] * self.world_size
        torch.distributed.all_gather_object(lists, list(items))
        return [item for part in lists for item in part]

    def from_master(self, load):
        """`load()` run on rank 0 only, its result sent to every rank (checkpoints live on the first host)."""
        if self.world_size == 1:
            return load()
        box = [load() if self.is_master else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def agreed(self, stop):
        """A stop flag all ranks read alike: each read is one all-reduce, so every rank stops at the same step."""
        return stop if self.world_size == 1 else _AgreedStop(stop, self)

    def sync_buffers(self, model):
        """Rank 0's buffers (BatchNorm statistics) to every rank: after its last training step each rank
        holds the statistics of its own batches, and DDP resends rank 0's only at the next forward."""
        if self.world_size > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def barrier(self):
        if self.world_size > 1:
            self.sum(0)  # an all-reduce: unlike barrier(), it needs no device guess on NCCL

    def close(self):
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _AgreedStop:
    """Reads of `requested` are agreed over ranks; every other attribute is the local stop flag's."""

    def __init__(self, local, dist):
        object.__setattr__(self, "_local", local)
        object.__setattr__(self, "_dist", dist)

    @property
    def requested(self):
        return self._dist.any(self._local.requested)

    def __getattr__(self, name):
        return getattr(self._local, name)

    def __setattr__(self, name, value):
        setattr(self._local, name, value)
