"""Data-parallel training across processes (torchrun): DistributedDataParallel, each
rank a slice of every global batch, metrics summed over ranks, MLflow from rank 0 only.

    make experiment EXP=rnn_vs_cnn GPUS=4
    torchrun --nproc_per_node 4 -m pixelexp experiment experiments/rnn_vs_cnn.yaml

Without torchrun's environment (WORLD_SIZE unset or 1) everything is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def teardown() -> None:
    """Destroy the process group, if one was set up. Left to the interpreter's exit, gloo's
    threads can outlive it and the process aborts ("terminate called without an active
    exception"; rare, but it happens in CI)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], ctx: Dist, device) -> list[float]:
    """Sum a few numbers over all ranks (identity in one process)."""
    if not ctx.active:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj, ctx: Dist):
    """Rank 0's value of a small picklable object, on every rank."""
    if not ctx.active:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Dist) -> None:
    if ctx.active:
        import torch.distributed as dist
        dist.barrier()


def wrap(model: torch.nn.Module, ctx: Dist, device) -> torch.nn.Module:
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
