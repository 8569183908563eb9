"""Data-parallel training over several processes (``torchrun``, or ``srun`` under Slurm).

Why a module of its own: the trainer stays one loop for one process and for many; what differs
under DDP (which process am I, which rows of a batch are mine, the sums every rank must agree
on, who writes files) is said here once, in :class:`DistEnv`, and the trainer asks it. Nothing
here keeps state of its own: the process group lives in ``torch.distributed``, as usual.

How a run is split (see :class:`LocalBatch`): every rank draws the *same* global batches as one
process would (same shuffle seed), and rank ``r`` of ``W`` trains on rows ``r, r + W, …`` of
each. Each rank's loss is the mean over its rows times ``weight = W · local / global``; DDP
averages the gradients over the ranks, so the step is the one-process step on the global batch
(up to the order of floating-point sums), also for a short last batch. Augmentation is drawn
for the whole global batch on every rank (cheap next to a forward pass) and sliced, so a sample
is cropped as in one process; the training attacks' random starts are drawn the same way (see
:mod:`robustact.train.adversarial`).

Not identical to one process: dropout masks (each rank's global RNG is seeded from
``(seed, epoch, rank)``, so ranks draw independent masks, as they must), batch-norm statistics
(per rank, over the local rows; ``SyncBatchNorm`` is the GPU-only remedy, via ``wrap_model``),
differential training's pairs (formed within a rank's rows) and anything a user's hook or loss
draws from the global RNG.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistEnv", "DistributedAbort", "LocalBatch", "unwrap"]


class DistributedAbort(ValueError):
    """Another rank (rank 0) failed before training and has reported why; this rank stops.

    Why a class: the command line prints rank 0's error once, and the other ranks exit quietly
    with the same exit code instead of printing it ``W - 1`` more times.
    """


@dataclass(frozen=True)
class LocalBatch:
    """This rank's part of one global batch.

    ``rows``: positions in the global batch (of ``size`` samples) that this rank trains on;
    ``weight``: the factor of the rank's mean loss that makes DDP's gradient average the
    one-process gradient (0 for the stand-in row a rank gets when the global batch has fewer
    samples than ranks: it must still take part in the gradient all-reduce). ``seeds``: the
    generator the training attacks draw their per-call seeds from, seeded as one process's
    global RNG is, so the seeds are the one process's (when nothing else draws from it).
    """

    rows: torch.Tensor
    size: int
    weight: float
    seeds: torch.Generator

    @property
    def samples(self) -> int:
        """Real samples in the part (0 for a stand-in row)."""
        return int(self.rows.numel()) if self.weight > 0 else 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise).

    Why: attacks and no-grad predictions must not go through DDP, whose forward may broadcast
    buffers (a collective on every call) and prepares a gradient reduction.
    """
    return model.module if isinstance(model, DistributedDataParallel) else model


def _int_env(env: Mapping[str, str], name: str, leading: bool = False) -> int:
    """An integer variable; ``leading``: its first number (Slurm's task counts per node read
    "8(x2)" or "8,7", and the first node's count is as good as any for sharing cores)."""
    value = env.get(name, "")
    try:
        return int(re.split(r"[(,]", value)[0] if leading else value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def _launch_numbers(env: Mapping[str, str]) -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, local world size) from torchrun's or Slurm's variables."""
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (also under srun + torchrun)
        world = _int_env(env, "WORLD_SIZE")
        local_rank = _int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        local_world = _int_env(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
        return _int_env(env, "RANK"), world, local_rank, local_world
    if "SLURM_PROCID" in env and "MASTER_ADDR" in env and "MASTER_PORT" in env:
        # srun starting every process itself; the job script names the rendezvous host/port.
        world = _int_env(env, "SLURM_NTASKS")
        per_node = next((n for n in ("SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE",
                                     "SLURM_TASKS_PER_NODE") if n in env), None)
        return (_int_env(env, "SLURM_PROCID"), world, _int_env(env, "SLURM_LOCALID"),
                _int_env(env, per_node, leading=True) if per_node else world)
    return None


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a multi-process run, and the collectives the trainer needs.

    ``rank``/``world_size``: global; ``local_rank``/``local_world_size``: on this node;
    ``backend``: ``"nccl"`` on GPUs, ``"gloo"`` on CPUs; ``device``: ``cuda:LOCAL_RANK`` or the
    CPU. Build it with :meth:`from_env`, then :meth:`init` before training, :meth:`close`
    after.
    """

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = "gloo"
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1} "
                             f"(world size {self.world_size})")
        if not 0 <= self.local_rank < max(self.local_world_size, 1):
            raise ValueError(f"local rank {self.local_rank} is outside 0.."
                             f"{self.local_world_size - 1}")
        if self.backend not in ("nccl", "gloo"):
            raise ValueError(f"backend must be 'nccl' or 'gloo', got {self.backend!r}")

    @classmethod
    def from_env(cls, device: str = "auto", environ: Mapping[str, str] | None = None
                 ) -> DistEnv | None:
        """The run this process belongs to, or None when it runs alone (world size 1).

        Reads torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``, or, when
        srun starts the processes itself, Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/
        ``SLURM_LOCALID`` (only with ``MASTER_ADDR`` and ``MASTER_PORT`` set, so a plain command
        inside an allocation stays one process). ``device``: ``auto`` (each process takes
        ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU), ``cpu`` or ``cuda``; one named
        GPU (``cuda:1``) is refused when several processes share a node.
        """
        env = os.environ if environ is None else environ
        numbers = _launch_numbers(env)
        if numbers is None or numbers[1] <= 1:
            return None
        rank, world, local_rank, local_world = numbers
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            return cls(rank, world, local_rank, local_world, "gloo", torch.device("cpu"))
        if device.startswith("cuda:") and local_world > 1:
            raise ValueError(f"--device {device} names one GPU for all {local_world} processes "
                             "of this node; pass --device cuda (each takes cuda:LOCAL_RANK)")
        if device.split(":")[0] != "cuda":
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if not torch.cuda.is_available():
            raise ValueError(f"device is {device!r} but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        try:  # one visible GPU: the launcher bound it to this process (srun --gpus-per-task=1)
            index = (torch.device(device).index if ":" in device
                     else local_rank if count > 1 else 0)
        except RuntimeError:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}") from None
        if index is None or index >= count:
            raise ValueError(f"local rank {local_rank} needs GPU {index}, but only {count} "
                             "are visible")
        return cls(rank, world, local_rank, local_world, "nccl", torch.device("cuda", index))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    def threads(self, given: int | None = None, environ: Mapping[str, str] | None = None
                ) -> int:
        """CPU threads for this process: ``given`` (``--threads``), else ``OMP_NUM_THREADS``
        (torchrun sets it to 1 unless the user did), else this node's cores shared out.

        Why: W processes with one thread per core each oversubscribe the node W times over.
        The caller sets the number (``torch.set_num_threads``); the library never does.
        """
        if given is not None:
            return given
        env = os.environ if environ is None else environ
        if env.get("OMP_NUM_THREADS"):
            n = _int_env(env, "OMP_NUM_THREADS")
            if n < 1:
                raise ValueError(f"OMP_NUM_THREADS must be at least 1, got {n}")
            return n
        if env.get("SLURM_CPUS_PER_TASK") and "RANK" not in env:  # srun: cores per process
            return max(1, _int_env(env, "SLURM_CPUS_PER_TASK"))
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
        return max(1, cores // max(1, self.local_world_size))

    # -- the process group ----------------------------------------------------------------------
    def init(self, timeout_s: float = 1800.0) -> None:
        """Join the process group (``MASTER_ADDR``/``MASTER_PORT`` from the environment)."""
        if tdist.is_initialized():
            return
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL and default allocations go to our GPU
        tdist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size,
                                 timeout=datetime.timedelta(seconds=timeout_s))

    def close(self) -> None:
        """Leave the process group (a no-op when it was never joined)."""
        if tdist.is_initialized():
            tdist.destroy_process_group()

    def check_ready(self) -> None:
        """One clear line when training is asked for before :meth:`init`."""
        if not tdist.is_initialized():
            raise ValueError("the process group is not initialised: call DistEnv.init() "
                             "before training with dist=")
        if tdist.get_world_size() != self.world_size or tdist.get_rank() != self.rank:
            raise ValueError(f"DistEnv says rank {self.rank} of {self.world_size}, the process "
                             f"group rank {tdist.get_rank()} of {tdist.get_world_size()}")

    def barrier(self) -> None:
        tdist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def wrap(self, model: nn.Module, ignore: Iterable[str] = (), **ddp: Any) -> nn.Module:
        """``model`` (already on :attr:`device`) in DistributedDataParallel.

        ``ignore``: names of parameters no loss gives a gradient and that every rank sets alike
        (differential training's head bias): DDP would wait for their gradients forever, and
        ``find_unused_parameters`` does not help, since they do take part in the forward.
        """
        names = list(ignore)
        if names:  # torch's (underscored) hook for it: pytorch/pytorch#43690
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, **ddp)

    # -- data and sums ----------------------------------------------------------------------------
    def rows(self, n: int) -> torch.Tensor:
        """This rank's positions among ``n`` samples: ``rank, rank + W, …`` (maybe none)."""
        return torch.arange(self.rank, n, self.world_size)

    def part(self, size: int, seeds: torch.Generator) -> LocalBatch:
        """This rank's :class:`LocalBatch` of a global batch of ``size`` samples."""
        rows = self.rows(size)
        if rows.numel() == 0:  # fewer samples than ranks: a stand-in row, weighted 0
            return LocalBatch(torch.zeros(1, dtype=torch.long), size, 0.0, seeds)
        return LocalBatch(rows, size, self.world_size * rows.numel() / size, seeds)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``values`` over all ranks (a new float64 tensor)."""
        t = values.detach().to(self.device, torch.float64).clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def agree(self, value: int, what: str) -> None:
        """Raise one line (on every rank) unless all ranks hold the same ``value``."""
        t = torch.tensor([value, -value], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        if t[0] != -t[1]:
            raise ValueError(f"the ranks disagree on {what} (from {-int(t[1])} to {int(t[0])}); "
                             "is the run folder shared by every node?")

    def broadcast_tensors(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's (e.g. batch-norm running statistics)."""
        for t in tensors:
            tdist.broadcast(t, src=0)

    def share(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object; others pass anything)."""
        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=self.device
                                    if self.device.type == "cuda" else None)
        return box[0]
