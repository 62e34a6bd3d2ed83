"""torch.distributed for training: one process per GPU under torchrun (DDP); nothing at all without it.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in every process it starts. Without them (a plain
`pipeline train`) the world is one process and every helper here returns its input unchanged, so
single-process training runs exactly as before.

The design that keeps a run the same recipe at any world size: every rank computes the same global
sample order for the epoch (stages.train.data.epoch_order, a function of seed and epoch) and takes an
interleaved share of it, so global batch j is the union of the ranks' local batches j. The weighted
loss is normalised by the weight of the whole global batch (known on every rank from the global order,
no communication), so DDP's gradient average equals the single-process gradient of the same batch.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import StageError
from pipeline.world import ONE, World, from_env  # noqa: F401  (World, from_env: this module's API too)


_device = torch.device("cpu")  # where collectives put their tensors (the rank's GPU under nccl)


def world() -> World:
    """The world of the running process group; one process outside a session()."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), from_env().local_rank)
    return ONE


def is_main() -> bool:
    """Only rank 0 writes files; outside a session every process is rank 0 of its own world."""
    return from_env().main


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (LOCAL_RANK) when training on CUDA under torchrun."""
    w = from_env()
    return torch.device("cuda", w.local_rank) if device.type == "cuda" and w.size > 1 else device


@contextmanager
def session(timeout_s: float, device: torch.device) -> Iterator[World]:
    """Join the process group for the duration of a training run (nccl on CUDA, gloo on CPU), with a
    timeout on every collective so that a dead rank fails the run instead of hanging it; leave it after."""
    global _device
    w = from_env()
    if w.size == 1:
        yield ONE
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _device = device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield world()
    except dist.DistError as exc:
        raise StageError(_peer_failed(w, timeout_s, exc)) from exc
    except RuntimeError as exc:
        # gloo reports a vanished peer as a plain RuntimeError from its transport
        if not any(s in str(exc) for s in ("Connection closed", "Connection reset", "Timed out", "timed out", "gloo", "NCCL")):
            raise
        raise StageError(_peer_failed(w, timeout_s, exc)) from exc
    finally:
        _device = torch.device("cpu")
        try:
            dist.destroy_process_group()
        except Exception:  # a group broken by a dead peer may refuse a clean exit; the error above is what matters
            pass


def _peer_failed(w: World, timeout_s: float, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return (f"distributed training failed on rank {w.rank} of {w.size}: another rank died or did not answer "
            f"within train.dist_timeout = {timeout_s:g}s; see that rank's log ({first})")


def local_batch(batch_size: int) -> int:
    """train.batch_size is the global batch per micro-step; each rank takes an equal share."""
    w = world()
    if batch_size % w.size:
        raise StageError(f"train.batch_size = {batch_size}: must be divisible by the {w.size} processes (it is the global batch)")
    return batch_size // w.size


def shard(order: np.ndarray, rank: int, size: int) -> np.ndarray:
    """This rank's interleaved share of a global order, padded by repeating it from the start (as
    DistributedSampler does) so every rank gets the same number of samples."""
    order = np.asarray(order)
    total = -(-len(order) // size) * size
    return np.resize(order, total)[rank::size]


@dataclass
class Share:
    """This rank's part of one epoch: its sample order and how to normalise each local batch's loss."""

    order: np.ndarray
    batch_weight: np.ndarray | None  # per local batch: global batch weight / world size; None: one process

    def denominator(self, i: int, w: torch.Tensor) -> torch.Tensor | float:
        return w.sum() if self.batch_weight is None else float(self.batch_weight[i])


def rank_share(order: np.ndarray, batch_size: int, drop_last: bool, weights: np.ndarray, w: World | None = None) -> Share:
    """The epoch's global `order` cut for this rank (of `w`, default the running world). With drop_last
    the order is first cut to whole global batches, so the ranks' local batches j together are exactly
    global batch j."""
    w = w or world()
    if w.size == 1:
        return Share(np.asarray(order), None)
    order = np.asarray(order)
    if drop_last:
        order = order[: len(order) // batch_size * batch_size]
    padded = np.resize(order, -(-len(order) // w.size) * w.size)
    sums = np.array([weights[padded[s : s + batch_size]].sum() for s in range(0, len(padded), batch_size)])
    return Share(shard(padded, w.rank, w.size), sums / w.size)


def rank_seed(seed: int) -> int:
    """Per-rank random streams (augmentation, dropout, mixup); rank 0 keeps the single-process seed."""
    return seed + 1_000_003 * world().rank


def gather_rows(fn: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """fn over `rows`, each rank doing a contiguous part; every rank gets the whole result in order."""
    w = world()
    if w.size == 1:
        return fn(rows)
    part = np.array_split(np.asarray(rows), w.size)[w.rank]
    parts: list = [None] * w.size
    dist.all_gather_object(parts, fn(part) if len(part) else None)
    return np.concatenate([p for p in parts if p is not None])


def all_sum(values: list[float]) -> list[float]:
    """Sums over the ranks (train loss and image counts for the epoch's metrics)."""
    if world().size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a NaN loss stops all ranks together, not one)."""
    if world().size == 1:
        return bool(flag)
    return all_sum([float(flag)])[0] > 0


def from_main(value):
    """Rank 0's value on every rank (curriculum scores: one order for all, even if GPU maths differ)."""
    if world().size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def agree(value, what: str) -> None:
    """Refuse to go on when the ranks see different states (e.g. a last.pt only one node can read)."""
    if world().size == 1:
        return
    seen: list = [None] * world().size
    dist.all_gather_object(seen, value)
    if any(v != seen[0] for v in seen):
        raise StageError(f"ranks disagree on {what}: {seen} (is the workdir on a filesystem every node shares?)")


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's BatchNorm statistics everywhere before evaluating, so every rank scores the same model."""
    if world().size == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, 0)


class Forward:
    """What the loop calls to train: the model itself on one process; DistributedDataParallel around it
    under torchrun, rebuilt when freezing changes which parameters train (DDP registers only those at
    construction); torch.compile on top when asked. Checkpoints and EMA use the bare model."""

    def __init__(self, model: torch.nn.Module, device: torch.device, sync_bn: bool, compile: bool):
        self.model, self.device, self.compile = model, device, compile
        self.size = world().size
        if self.size > 1 and sync_bn:
            if device.type != "cuda":
                raise StageError("train.sync_bn = true needs CUDA (torch's SyncBatchNorm is GPU-only); set it false on CPU")
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the top module
        self.trainable: tuple | None = None
        self.ddp, self.stepping = None, True
        self.call = torch.compile(model) if compile and self.size == 1 else model

    def _refresh(self) -> None:
        trainable = tuple(q.requires_grad for q in self.model.parameters())
        if trainable != self.trainable:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            self.call = torch.compile(self.ddp) if self.compile else self.ddp
            self.trainable = trainable

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            self._refresh()
            self.ddp.require_backward_grad_sync = self.stepping  # read by DDP's forward, as no_sync() sets it
        return self.call(x)

    def sync_grads(self, stepping: bool) -> None:
        """Call before the forward: with gradient accumulation, all-reduce only on the micro-step that
        steps the optimiser (what DDP's no_sync() does)."""
        self.stepping = stepping
