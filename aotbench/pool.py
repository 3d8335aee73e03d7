"""The AOT pool: draw P samples, draw P noises, pair them once, consume the pool in P/B optimizer steps.

Pool ``k`` of rank ``r`` is a pure function of ``(seed, r, k)``: its data indices come from a stream of seeded epoch
permutations, its augmentation and noise from seeded generators. So the pairing of pool k+1 can run in a background
worker while pool k trains, and a resumed run recomputes exactly the pools it needs.

Three generalizations of the paper's pool, each a contract option of the pairing or the model
(:class:`aotbench.contracts.Pairing`):

- **noise factor** ``f``: the pairing receives ``f * P`` noises and returns an *injective* map from the P items to
  them (Improved Immiscible Diffusion's nearest-of-k noise, Li et al. arXiv 2505.18521);
- **own noise**: ``pair`` may return ``(perm, noise)``, noise it drew itself (LOOM-CFM's persistent per-item noise,
  Davtyan et al., ICLR 2025); a *stateful* pairing also sees the pool's dataset indices, and its state before and
  after each pool travels with the pool, so the engine can checkpoint it (stateful pools are paired in order);
- **global pools** (``TrainConfig.global_pool``): one assignment over every rank's pool (:class:`RankPools`).
  Each rank's pool being a pure function of its coordinates, any process can draw every rank's pool itself, so the
  global pool needs no collective (LOOM-CFM's and torchcfm users' all-gather computes the same concatenation).

Each pool also carries its coupling statistics (:func:`coupling_stats`), summed by the engine into the model's
diagnostics (:func:`coupling_summary`).
"""

from __future__ import annotations

import copy
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import UserError
from .seeds import generator

#: the squared norms of at most this many used noise vectors per model go into ``noise_ks_p``
KS_SAMPLES = 10_000
#: the covariance diagnostic looks at this many evenly spaced coordinates (a d x d sum is too large for images)
COV_COORDS = 64


@dataclass
class Pool:
    """One paired pool. ``y`` [P, *S] data, ``noise`` [M, *S] (M >= P), ``perm`` [P] injective into range(M):
    noise[perm[i]] goes with y[i]. ``noise[own + i]`` is the noise the engine drew for item i (what independent
    pairing would use), unless the pairing returned noise of its own. ``stats``: :func:`coupling_stats` of the pool. ``state_before`` / ``state_after``: a stateful
    pairing's state before and after pairing this pool (None otherwise)."""

    k: int
    index: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor | None
    noise: torch.Tensor
    perm: torch.Tensor
    augment_labels: torch.Tensor | None
    pair_seconds: float
    own: int = 0
    stats: dict | None = None
    state_before: Any = None
    state_after: Any = None

    def batch(self, j: int, b: int) -> dict:
        """The j-th batch of size b: data, its paired noise, labels, and the dataset indices used."""
        sl = slice(j * b, (j + 1) * b)
        return dict(y=self.y[sl], noise=self.noise[self.perm[sl]], index=self.index[sl],
                    labels=None if self.labels is None else self.labels[sl],
                    augment_labels=None if self.augment_labels is None else self.augment_labels[sl])


def check_bijection(perm, n: int, who: str) -> torch.Tensor:
    """The engine's guard: a pairing must return a permutation of range(n) as a LongTensor."""
    return check_injection(perm, n, n, who)


def check_injection(perm, n: int, m: int, who: str) -> torch.Tensor:
    """The engine's guard: a pairing must map its ``n`` items to ``n`` distinct noises out of ``m`` (a LongTensor
    [n] of distinct values in range(m)); with ``m == n`` that is a permutation. Raises UserError (one line)."""
    kind = "bijection" if m == n else "injection"
    if not isinstance(perm, torch.Tensor):
        try:
            perm = torch.as_tensor(perm)
        except Exception:
            raise UserError(f"pairing '{who}' returned {type(perm).__name__}, not a permutation tensor") from None
    if perm.dtype not in (torch.int64, torch.int32) or perm.shape != (n,):
        raise UserError(f"pairing '{who}' returned a non-{kind}: expected a [{n}] integer tensor, "
                        f"got {tuple(perm.shape)} {perm.dtype}")
    perm = perm.long().cpu()
    if n and (int(perm.min()) < 0 or int(perm.max()) >= m):
        raise UserError(f"pairing '{who}' returned noise indices outside 0..{m - 1}")
    dup = n - torch.unique(perm).numel()
    if dup:
        raise UserError(f"pairing '{who}' returned a non-{kind} ({dup} duplicated noise indices out of {m})")
    return perm


def noise_factor(pairing, who: str) -> int:
    """The pairing's noise factor (optional attribute ``noise_factor``, default 1), checked: an int >= 1."""
    f = getattr(pairing, "noise_factor", 1)
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise UserError(f"pairing '{who}' has noise_factor {f!r}; it must be an integer >= 1")
    return f


def is_stateful(pairing) -> bool:
    """Whether the pairing keeps state across pools (optional class attribute ``stateful``)."""
    return bool(getattr(pairing, "stateful", False))


def call_pairing(pairing, who: str, y: torch.Tensor, noise: torch.Tensor, labels, index) -> tuple:
    """Run one pairing and check what it returns: ``(perm, noise, seconds)``, ``perm`` injective into the noise
    it returned (its own noise, if it drew any, else ``noise``). A stateful pairing also receives ``index``.

    Raises UserError (one line) for a non-injective map, and for own noise of the wrong shape or non-finite."""
    t0 = time.perf_counter()
    out = pairing.pair(y, noise, labels, index=index) if is_stateful(pairing) else pairing.pair(y, noise, labels)
    seconds = time.perf_counter() - t0
    if isinstance(out, tuple):
        perm, own = out
        if not isinstance(own, torch.Tensor) or own.shape[1:] != y.shape[1:] or own.shape[0] < y.shape[0]:
            raise UserError(f"pairing '{who}' returned noise of shape {tuple(getattr(own, 'shape', ()))}; expected "
                            f"[M >= {y.shape[0]}, {', '.join(map(str, y.shape[1:]))}]")
        if not bool(torch.isfinite(own).all()):
            raise UserError(f"pairing '{who}' returned non-finite noise")
        noise = own.to(torch.float32)
    else:
        perm = out
    return check_injection(perm, y.shape[0], noise.shape[0], who), noise, seconds


def coupling_stats(y: torch.Tensor, used: torch.Tensor, fresh: torch.Tensor, ks_rows: int) -> dict:
    """The sums one pool adds to the model's coupling diagnostics (all float64, on the CPU), from its data ``y``
    [P, *S], the noise each item trained with ``used`` [P, *S] (``noise[perm]``) and ``fresh`` [P, *S], the noise
    the engine drew for each item (what independent pairing trains with; for a pairing with its own noise, not that
    noise, so its cost is measured against the same baseline as every other pairing's):

    ``paired`` / ``independent``: sum over items of ||y_i - used_i|| and of ||y_i - fresh_i|| (L2, the paper's
    cost); ``n``: items; ``sq_norms``: ||used_i||^2 of the first ``ks_rows`` items (pool rows are in random order,
    so they are a random sample of the used noise); ``noise_sum`` [d] and ``cov_sum`` [c, c]: sum of the used noise
    and of its outer products over :data:`COV_COORDS` evenly spaced coordinates.
    """
    p = y.shape[0]
    yf = y.reshape(p, -1).double()
    used = used.reshape(p, -1).double()
    mine = fresh.reshape(p, -1).double()
    cols = cov_coords(yf.shape[1])
    sub = used[:, cols]
    return {"paired": float((yf - used).norm(dim=1).sum()), "independent": float((yf - mine).norm(dim=1).sum()),
            "n": p, "sq_norms": used[:ks_rows].pow(2).sum(1), "noise_sum": used.sum(0), "cov_sum": sub.T @ sub}


def cov_coords(d: int) -> torch.Tensor:
    """The coordinates the covariance diagnostic uses: at most :data:`COV_COORDS`, evenly spaced over ``d``."""
    return torch.linspace(0, d - 1, min(d, COV_COORDS)).round().long()


def add_stats(total: dict | None, stats: dict) -> dict:
    """``total`` plus one pool's :func:`coupling_stats` (sums added, squared-norm samples concatenated)."""
    if total is None:
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in stats.items()}
    out = {k: total[k] + stats[k] for k in ("paired", "independent", "n", "noise_sum", "cov_sum")}
    out["sq_norms"] = torch.cat([total["sq_norms"], stats["sq_norms"]])
    return out


def coupling_summary(total: dict) -> dict[str, float]:
    """The model's coupling diagnostics from the summed :func:`coupling_stats` of every pool it trained on.

    - ``pair_cost_ratio``: mean paired L2 cost over the mean independent cost of the same pools (1 for independent
      pairing; below 1 for a coupling that shortens the paths);
    - ``noise_ks_p``: Kolmogorov-Smirnov p-value of the used noise's squared norms against chi-squared with d
      degrees of freedom (what they are under N(0, I)); a small value says the coupling shifted the noise;
    - ``noise_mean_z``: the largest |mean| over coordinates of the used noise, in standard errors (sqrt(n) |mean|);
    - ``noise_cov_max``: the largest |entry| of (sample covariance - I) over :data:`COV_COORDS` coordinates;
    - ``noise_n``: the number of used noise vectors, ``noise_ks_n`` the number in the KS test.
    """
    from scipy import stats

    n = total["n"]
    mean = total["noise_sum"] / n
    d = mean.numel()
    sub_mean = mean[cov_coords(d)]
    cov = total["cov_sum"] / n - torch.outer(sub_mean, sub_mean)
    sq = total["sq_norms"].numpy()
    return {"pair_cost_ratio": total["paired"] / total["independent"],
            "noise_ks_p": float(stats.kstest(sq, stats.chi2(d).cdf).pvalue),
            "noise_mean_z": float(mean.abs().max() * math.sqrt(n)),
            "noise_cov_max": float((cov - torch.eye(cov.shape[0], dtype=cov.dtype)).abs().max()),
            "noise_n": int(n), "noise_ks_n": int(sq.size)}


class PoolSource(Dataset):
    """Map-style dataset whose item ``k`` is pool k of one rank, paired. Works in-process or in a DataLoader worker.

    ``augment`` (optional) is ``augment(y, generator) -> (y_aug, augment_labels)``, applied *before* pairing.
    ``ks_rows``: how many used noise vectors of each pool enter the KS diagnostic (:func:`coupling_stats`).
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor | None, pool: int, seed: int, rank: int,
                 pairing, pairing_name: str, augment: Callable | None = None, ks_rows: int = 0):
        self.data, self.labels, self.pool, self.seed, self.rank = data, labels, pool, seed, rank
        self.pairing, self.pairing_name, self.augment, self.ks_rows = pairing, pairing_name, augment, ks_rows
        self.factor = 1 if pairing is None else noise_factor(pairing, pairing_name)

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

    def draw(self, k: int) -> dict:
        """Pool k before pairing: ``index`` [P], ``y`` [P, *S], ``labels``, ``augment_labels`` and ``noise``
        [f P, *S] (f the pairing's noise factor; with f = 1 exactly the noise of a plain pool)."""
        index = self.indices(k)
        y = self.data[index]
        labels = None if self.labels is None else self.labels[index]
        augment_labels = None
        if self.augment is not None:
            y, augment_labels = self.augment(y, generator("augment", self.seed, self.rank, k))
        noise = torch.randn((self.factor * y.shape[0], *y.shape[1:]),
                            generator=generator("noise", self.seed, self.rank, k))
        return dict(index=index, y=y, labels=labels, augment_labels=augment_labels, noise=noise)

    def __getitem__(self, k: int) -> Pool:
        d = self.draw(k)
        before = copy.deepcopy(self.pairing.state_dict()) if is_stateful(self.pairing) else None
        perm, noise, seconds = call_pairing(self.pairing, self.pairing_name, d["y"], d["noise"], d["labels"],
                                            d["index"])
        after = copy.deepcopy(self.pairing.state_dict()) if before is not None else None
        return Pool(k, d["index"], d["y"], d["labels"], noise, perm, d["augment_labels"], seconds,
                    stats=coupling_stats(d["y"], noise[perm], d["noise"][:len(perm)], self.ks_rows),
                    state_before=before, state_after=after)


class RankPools(Dataset):
    """Map-style dataset whose item ``k`` is pool k of each of ``ranks`` (a dict rank -> :class:`Pool`): what one
    training process consumes per pool, whether it simulates every rank or runs one under DDP.

    ``sources`` holds a :class:`PoolSource` for every rank of the run (0..R-1). Per-rank pairing (the paper's, and
    the default) pairs each wanted rank's pool on its own. With ``global_pool`` every rank's pool is drawn, the R
    pools are concatenated (data [R P], noise [R f P], labels, indices) and paired by one assignment, and each wanted
    rank takes its rows: its data, all the noise, and its part of the map. Rank r's own noise starts at r f P.
    The solve's seconds are counted once, on the first wanted rank's pool.
    """

    def __init__(self, sources: dict[int, PoolSource], ranks: list[int], global_pool: bool = False):
        self.sources, self.ranks, self.global_pool = sources, list(ranks), global_pool

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int) -> dict[int, Pool]:
        if not self.global_pool:
            return {r: self.sources[r][k] for r in self.ranks}
        order = sorted(self.sources)
        drawn = [self.sources[r].draw(k) for r in order]
        first = self.sources[order[0]]
        cat = {key: None if drawn[0][key] is None else torch.cat([d[key] for d in drawn])
               for key in ("index", "y", "labels", "augment_labels", "noise")}
        perm, noise, seconds = call_pairing(first.pairing, first.pairing_name, cat["y"], cat["noise"],
                                            cat["labels"], cat["index"])
        p, f = first.pool, first.factor
        out = {}
        for i, r in enumerate(order):
            if r not in self.ranks:
                continue
            d, sl = drawn[i], slice(i * p, (i + 1) * p)
            out[r] = Pool(k, d["index"], d["y"], d["labels"], noise, perm[sl], d["augment_labels"],
                          seconds if not out else 0.0, own=i * f * p,
                          stats=coupling_stats(d["y"], noise[perm[sl]], d["noise"][:p], first.ks_rows))
        return out


class _WorkerInit:
    """Sets the pairing worker's torch threads (a class, not a closure, so that spawned workers can unpickle it)."""

    def __init__(self, threads: int):
        self.threads = threads

    def __call__(self, _worker_id):
        torch.set_num_threads(self.threads)


def _first_source(source: PoolSource | RankPools) -> PoolSource:
    return next(iter(source.sources.values())) if isinstance(source, RankPools) else source


def check_workers(source: PoolSource | RankPools, workers: int) -> None:
    """Refuse more than one pairing worker for a stateful pairing (UserError, one line)."""
    first = _first_source(source)
    if workers > 1 and is_stateful(first.pairing):
        raise UserError(f"pairing '{first.pairing_name}' keeps state from pool to pool, so its pools are paired in "
                        f"order by one process: use --pair-workers 0 or 1, not {workers}")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(source: PoolSource | RankPools, workers: int, available: int | None = None) -> None:
    """Refuse, before any worker starts, pools whose pairing workers would not fit in memory together: each of
    ``max(workers, 1)`` processes pairs one pool at a time and needs the pairing's ``pool_memory`` (optional; a
    pairing without it is not checked). A global pool is one pool of every rank's items. UserError, one line."""
    first = _first_source(source)
    estimate = getattr(first.pairing, "pool_memory", None)
    available = available if available is not None else available_memory()
    if estimate is None or available is None:
        return
    n = first.pool * (len(source.sources) if isinstance(source, RankPools) and source.global_pool else 1)
    each = int(estimate(n, tuple(first.data.shape[1:])))
    need = max(workers, 1) * each
    if need > available:
        raise UserError(f"pairing '{first.pairing_name}' of pools of {n} with {max(workers, 1)} pairing "
                        f"process(es) needs about {need / 2**30:.1f} GiB ({each / 2**30:.2f} GiB each), but "
                        f"{available / 2**30:.1f} GiB are available; use fewer --pair-workers or a smaller pool")


def check_picklable(source: PoolSource | RankPools) -> None:
    """Refuse, before a worker starts, a pairing that cannot travel to a worker process (one line, not a traceback).

    A spawned worker (several pairing threads, or a CUDA trainer) receives the pairing by pickle, and Python 3.14 makes
    the forkserver, which pickles too, the Linux default; the hookspec asks every pairing to be picklable. The check
    runs whatever the start method, so a pairing that works on one machine does not fail on another. Only the pairing
    is tried (the data tensors always pickle, and pickling them would copy the whole training set).
    """
    source = _first_source(source)
    try:
        pickle.dumps(source.pairing)
    except Exception as err:
        raise UserError(f"pairing '{source.pairing_name}' ({type(source.pairing).__module__}."
                        f"{type(source.pairing).__qualname__}) cannot be sent to a pairing worker process: "
                        f"pickle fails with {type(err).__name__}: {err}; make it picklable (no lambdas, closures or "
                        f"open file handles as attributes) or use --pair-workers 0") from None


def _background(source: PoolSource | RankPools, first: int, last: int, workers: int, threads: int,
                context: str | None) -> Iterator:
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


def iter_pools(source: PoolSource | RankPools, first: int, last: int, workers: int = 1, threads: int = 1,
               context: str | None = None) -> Iterator:
    """Pools first..last-1, in order. With ``workers > 0`` they are paired ahead in background processes
    (``threads`` torch threads each), so pool k+1 is paired while pool k trains; the pools are identical either way.
    With workers, the pairing's picklability is checked here, at the call, before any worker starts.

    A stateful pairing's pools depend on every pool before them, so they are paired by one process, in order: more
    than one worker is refused (UserError, one line) before any starts; so are workers whose pairings would not
    fit in memory together (:func:`check_memory`). Several workers pair consecutive pools at once (DataLoader
    hands pool k to worker k mod W and yields them in order), which is exact: a pool is a function of its index.
    """
    check_workers(source, workers)
    check_memory(source, workers)
    if workers <= 0:
        return (source[k] for k in range(first, last))
    check_picklable(source)
    return _background(source, first, last, workers, threads, context)
