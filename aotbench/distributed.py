"""Data-parallel training with torch DDP: process-group setup under torchrun or a submitit job, and rank helpers.

Each rank is one process that draws and pairs its *own* pool (``PoolSource(seed, rank)``), as the paper does (AOT
per GPU), and DDP averages the gradients. So a DDP run of a config with ``ranks=R`` computes what
:func:`aotbench.train.train_model` computes when it simulates the R ranks in one process, up to float rounding in the
gradient all-reduce (the weights agree to ``allclose``, not bit for bit).

Where the world comes from:

- **torchrun** (``torchrun --nproc_per_node R -m aotbench train ...``) exports ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
- **a submitit job** with ``tasks_per_node = R`` (SLURM or the local executor) knows its rank from the scheduler;
  :class:`submitit.helpers.TorchDistributedEnvironment` exports the same variables.

The backend is NCCL on CUDA devices and gloo on the CPU (what the tests use). Rank r uses ``cuda:<local rank>``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from .errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place in a (possibly trivial) data-parallel world."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """True when there is more than one rank."""
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        """True on rank 0, the rank that shows progress and logs."""
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device of this rank: under DDP, ``cuda`` and ``auto`` become ``cuda:<local rank>``."""
        from .devices import resolve_device

        return resolve_device(requested, self.local_rank if self.distributed else None)


def launched_by_torchrun() -> bool:
    """True when torchrun started this process (``TORCHELASTIC_RUN_ID``), or ``RANK`` and ``WORLD_SIZE`` are set outside
    a submitit executor."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ
                                                   and "SUBMITIT_EXECUTOR" not in os.environ)


def _backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"


def init(device: str = "auto", *, submitit_tasks: bool = False, timeout_s: float = 1800) -> World:
    """Join the process group described by the environment (torchrun, or a submitit job with several tasks).

    Returns ``World()`` (no process group) when there is a single process. ``submitit_tasks``: read the world from
    the running submitit job (its tasks), else from torchrun's variables.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                     dist.get_backend())
    if submitit_tasks:
        import submitit

        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # not inside a submitit job (a direct call): one process
            return World()
        if env.num_tasks <= 1:
            return World()
        # overwrite: a job requeued in the same shell, or launched from another job, may carry stale values;
        # keep CUDA_VISIBLE_DEVICES as SLURM set it (rank r uses cuda:<local rank> among the allocated GPUs)
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    elif not launched_by_torchrun():
        return World()
    world_size = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if world_size <= 1:
        return World(rank, world_size, local_rank)
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; DDP training is not possible")
    probe = World(rank, world_size, local_rank)
    backend = _backend(probe.device(device))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
    return World(rank, world_size, local_rank, backend)


def shutdown(world: World) -> None:
    """Leave the process group :func:`init` joined; a no-op for a single process."""
    import torch.distributed as dist

    if world.distributed and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["World", "init", "shutdown", "launched_by_torchrun"]
