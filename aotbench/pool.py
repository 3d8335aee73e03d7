"""The AOT pool: draw P samples, draw P noises, pair them once, consume the pool in P/B optimizer steps.

Pool ``k`` of rank ``r`` is a pure function of ``(seed, r, k)``: its data indices come from a stream of seeded epoch
permutations, its augmentation and noise from seeded generators. So the pairing of pool k+1 can run in a background
worker while pool k trains, and a resumed run recomputes exactly the pools it needs.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import UserError
from .seeds import generator


@dataclass
class Pool:
    """One paired pool. ``y`` [P, *S] data, ``noise`` [P, *S], ``perm`` [P]: noise[perm[i]] goes with y[i]."""

    k: int
    index: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor | None
    noise: torch.Tensor
    perm: torch.Tensor
    augment_labels: torch.Tensor | None
    pair_seconds: float

    def batch(self, j: int, b: int) -> dict:
        """The j-th batch of size b: data, its paired noise, labels, and the dataset indices used."""
        sl = slice(j * b, (j + 1) * b)
        return dict(y=self.y[sl], noise=self.noise[self.perm[sl]], index=self.index[sl],
                    labels=None if self.labels is None else self.labels[sl],
                    augment_labels=None if self.augment_labels is None else self.augment_labels[sl])


def check_bijection(perm, n: int, who: str) -> torch.Tensor:
    """The engine's guard: a pairing must return a permutation of range(n) as a LongTensor."""
    if not isinstance(perm, torch.Tensor):
        try:
            perm = torch.as_tensor(perm)
        except Exception:
            raise UserError(f"pairing '{who}' returned {type(perm).__name__}, not a permutation tensor") from None
    if perm.dtype not in (torch.int64, torch.int32) or perm.shape != (n,):
        raise UserError(f"pairing '{who}' returned a non-bijection: expected a [{n}] integer tensor, "
                        f"got {tuple(perm.shape)} {perm.dtype}")
    perm = perm.long().cpu()
    if not torch.equal(torch.sort(perm).values, torch.arange(n)):
        dup = n - torch.unique(perm).numel()
        raise UserError(f"pairing '{who}' returned a non-bijection ({dup} duplicated noise indices out of {n})")
    return perm


class PoolSource(Dataset):
    """Map-style dataset whose item ``k`` is pool k, paired. Works in-process or in a DataLoader worker.

    ``augment`` (optional) is ``augment(y, generator) -> (y_aug, augment_labels)``, applied *before* pairing.
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor | None, pool: int, seed: int, rank: int,
                 pairing, pairing_name: str, augment: Callable | None = None):
        self.data, self.labels, self.pool, self.seed, self.rank = data, labels, pool, seed, rank
        self.pairing, self.pairing_name, self.augment = pairing, pairing_name, augment

    def __len__(self) -> int:  # pools are an endless stream; DataLoader only needs a sampler of k's
        return 2**62

    def indices(self, k: int) -> torch.Tensor:
        """Data indices of pool k: positions [kP, (k+1)P) of the concatenated seeded epoch permutations."""
        n, p = self.data.shape[0], self.pool
        start, stop = k * p, (k + 1) * p
        out = []
        for epoch in range(start // n, (stop - 1) // n + 1):
            perm = torch.randperm(n, generator=generator("epoch", self.seed, self.rank, epoch))
            lo, hi = max(start - epoch * n, 0), min(stop - epoch * n, n)
            out.append(perm[lo:hi])
        return torch.cat(out)

    def __getitem__(self, k: int) -> Pool:
        index = self.indices(k)
        y = self.data[index]
        labels = None if self.labels is None else self.labels[index]
        augment_labels = None
        if self.augment is not None:
            y, augment_labels = self.augment(y, generator("augment", self.seed, self.rank, k))
        noise = torch.randn(y.shape, generator=generator("noise", self.seed, self.rank, k))
        t0 = time.perf_counter()
        perm = self.pairing.pair(y, noise, labels)
        seconds = time.perf_counter() - t0
        perm = check_bijection(perm, y.shape[0], self.pairing_name)
        return Pool(k, index, y, labels, noise, perm, augment_labels, seconds)


class _WorkerInit:
    """Sets the pairing worker's torch threads (a class, not a closure, so that spawned workers can unpickle it)."""

    def __init__(self, threads: int):
        self.threads = threads

    def __call__(self, _worker_id):
        torch.set_num_threads(self.threads)


def check_picklable(source: PoolSource) -> None:
    """Refuse, before a worker starts, a pairing that cannot travel to a worker process (one line, not a traceback).

    A spawned worker (several pairing threads, or a CUDA trainer) receives the pairing by pickle, and Python 3.14 makes
    the forkserver, which pickles too, the Linux default; the hookspec asks every pairing to be picklable. The check
    runs whatever the start method, so a pairing that works on one machine does not fail on another. Only the pairing
    is tried (the data tensors always pickle, and pickling them would copy the whole training set).
    """
    try:
        pickle.dumps(source.pairing)
    except Exception as err:
        raise UserError(f"pairing '{source.pairing_name}' ({type(source.pairing).__module__}."
                        f"{type(source.pairing).__qualname__}) cannot be sent to a pairing worker process: "
                        f"pickle fails with {type(err).__name__}: {err}; make it picklable (no lambdas, closures or "
                        f"open file handles as attributes) or use --pair-workers 0") from None


def _background(source: PoolSource, first: int, last: int, workers: int, threads: int,
                context: str | None) -> Iterator[Pool]:
    """Pools from a DataLoader's workers (started at the first ``next``), a worker's UserError kept to one line.

    DataLoader re-raises a worker's exception as ``UserError("Caught UserError in DataLoader worker process 0.
    Original Traceback ...: <message>")``, a traceback squeezed onto one line; the message is its last part.
    """
    loader = DataLoader(source, batch_size=None, sampler=range(first, last), num_workers=workers,
                        prefetch_factor=2, worker_init_fn=_WorkerInit(threads), multiprocessing_context=context)
    marker = f"{UserError.__module__}.{UserError.__qualname__}: "
    try:
        yield from loader
    except UserError as err:
        text = str(err)
        if marker not in text:
            raise
        raise UserError(text.rsplit(marker, 1)[1]) from None


def iter_pools(source: PoolSource, first: int, last: int, workers: int = 1, threads: int = 1,
               context: str | None = None) -> Iterator[Pool]:
    """Pools first..last-1, in order. With ``workers > 0`` they are paired ahead in background processes
    (``threads`` torch threads each), so pool k+1 is paired while pool k trains; the pools are identical either way.
    With workers, the pairing's picklability is checked here, at the call, before any worker starts.
    """
    if workers <= 0:
        return (source[k] for k in range(first, last))
    check_picklable(source)
    return _background(source, first, last, workers, threads, context)
