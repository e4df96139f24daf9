"""Data-parallel set-up. SageMaker (or torchrun) starts the processes; this only joins them.

A single process is the default: rank 0 of 1, on the first GPU if there is one. When the launcher of the
processes sets WORLD_SIZE/RANK/LOCAL_RANK (torchrun), the job joins a process group (NCCL on GPU, gloo
on CPU) whose rank 0 runs on the first host, and the model is wrapped in DistributedDataParallel.
"""
import os
from dataclasses import dataclass

import torch


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
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and env.num_gpus > 0
        device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if world_size > 1 and not torch.distributed.is_initialized():
            if cuda:
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world_size, device)

    def wrap(self, model):
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
