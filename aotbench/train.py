"""The training engine: EDM's training loop on AOT-paired pools, with EMA, atomic checkpoints and exact resume.

:func:`train_model` follows EDM's ``training/training_loop.py`` (Karras, Aittala, Aila, Laine, "Elucidating the
Design Space of Diffusion-Based Generative Models", NeurIPS 2022) paragraph by paragraph: accumulate gradients, update
weights, update EMA, save the training state, check for abort. The loss is EDM's weighted denoising loss
(``training/loss.py``, ``EDMLoss``; :func:`aotbench.objective.denoising_loss`) with the noise levels, weight and
preconditioning of the model's objective plugin (EDM's own by default; flow matching is another). What differs is
where a batch comes from, Approximated Optimal Transport (AOT; Kim, Choi, Shin, Hwang, Yoon, arXiv 2403.05069): each
rank draws a pool of P samples and P standard-normal noises, pairs them once with the pairing plugin, and consumes
the pool in P/b optimizer steps (b = per-rank batch), drawing each sample's sigma after pairing. Pools are paired
ahead in a background worker (:func:`aotbench.pool.iter_pools`).

Every random draw is seeded by its coordinates (seed, rank, pool or step), so the position in the data and every
random state follow from the step counter; the checkpoint (:class:`TrainState`) holds the model, EMA, optimizer and
step, and a run resumed from any checkpoint ends with bit-identical weights to an uninterrupted one (on the same
device and thread count).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import edm
from .config import TrainConfig
from .data import Splits
from .datasets import check_bound, load_splits
from .errors import UserError
from .objective import Denoiser, denoising_loss
from .plugins import Registry
from .pool import (KS_SAMPLES, Pool, PoolSource, RankPools, add_stats, coupling_summary, is_stateful,
                   iter_pools)
from .progress import bar
from .seeds import derive, generator
from .snapshots import snapshot_config
from .storage import atomic_torch_save, load_checkpoint

CKPT_FORMAT = "aotbench-model-v1"
#: the wall-clock totals a checkpoint carries, in seconds (see :class:`TrainState`)
TIMINGS = ("train_seconds", "pair_seconds", "pair_wait_seconds")
#: autocast dtype of each mixed precision (fp32 runs without autocast)
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; rerunning resumes it."""


@dataclass
class TrainOptions:
    """How to run training (not part of the model's identity).

    ``ckpt_every`` and ``log_every`` count optimizer steps. ``device`` is a torch device string (``cpu``,
    ``cuda``, ``cuda:1``).
    """

    device: str = "cpu"
    ckpt_every: int = 500
    #: background pairing processes; None = auto: one when a core is left over (a GPU run, or more cores than
    #: torch threads), else pair in line (on a 2-core laptop a worker would only fight the trainer for cores)
    pair_workers: int | None = None
    #: torch threads of each pairing process
    pair_threads: int = 1
    progress: bool = True
    #: stop on ``stop_signals`` after the current step, with a checkpoint (only in the main thread)
    handle_signals: bool = False
    log_every: int = 50
    #: called after every optimizer step as on_step(step, loss); raising from it stops training (tests use this)
    on_step: Callable[[int, float], None] | None = None
    #: distributed: this process's rank and the world size (1 = simulate all cfg.ranks in this process); with
    #: world_size > 1 the process group must be initialized (:func:`aotbench.distributed.init`)
    world_rank: int = 0
    world_size: int = 1
    #: with handle_signals: the signals that stop training after a checkpoint (None = SIGTERM and SIGUSR2). A
    #: submitit job passes only its preemption signal (USR2) and leaves SIGTERM to submitit, which ignores it.
    stop_signals: tuple | None = None
    #: snapshots to write on the way: {step: checkpoint path} (:mod:`aotbench.snapshots`); at each such step the
    #: state is saved, finished, as the model of the same config with ``train_steps = step`` (unless that exists)
    snapshots: dict[int, Path] = field(default_factory=dict)

    def __post_init__(self):
        from .errors import UserError

        if self.pair_workers is not None and (isinstance(self.pair_workers, bool) or self.pair_workers < 0):
            raise UserError(f"pairing workers must be 0 or more (0 = pair in line), got {self.pair_workers}")
        if isinstance(self.pair_threads, bool) or self.pair_threads < 1:
            raise UserError(f"pairing threads must be 1 or more, got {self.pair_threads}")


def build_model(registry: Registry, cfg: TrainConfig, splits: Splits) -> Denoiser:
    """The denoiser of ``cfg``, freshly initialized: the network plugin wrapped in the preconditioning of the
    objective plugin ``cfg.objective``.

    The network takes samples of shape ``splits.shape`` ([C, H, W] images, [D] points) and, for a conditional
    model, ``splits.num_classes`` classes (index ``num_classes`` is "no label", for label dropout); its weights are
    drawn under the seed ``derive("init", cfg.seed)`` without moving the global RNG. The preconditioning is the
    objective's (:class:`aotbench.objective.Denoiser`; EDM's Table 1, ``training/networks.py`` ``EDMPrecond``, for
    ``edm``). On the CPU, in train mode.

    Raises :class:`UserError` for a conditional model on data without labels, and for a network that refuses the
    data's shape (its ``ValueError`` or ``TypeError``).
    """
    num_classes = splits.num_classes if cfg.conditional else 0
    if cfg.conditional and (splits.train_labels is None or splits.num_classes < 1):
        raise UserError(f"dataset '{cfg.dataset.name}' has no labels; a conditional model needs them")
    comp = registry.get("network", cfg.network.name)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(derive("init", cfg.seed))
            net = comp.obj(splits.shape, num_classes, **cfg.network.kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"network '{cfg.network.name}' cannot take data of shape {splits.shape}: {err}") from None
    objective = registry.get("objective", cfg.objective.name).build(**cfg.objective.kwargs)
    return Denoiser(net, objective, num_classes=num_classes)


def _set_tf32(device: torch.device, precision: str) -> None:
    """fp32 means fp32: TF32 matmuls and convolutions off on CUDA, as EDM's training loop sets them."""
    if device.type == "cuda" and precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


@dataclass
class TrainState:
    """A run in progress, everything its checkpoint holds: EDM's training-state dump (network and optimizer) plus
    the EMA that EDM keeps in its network snapshots, the step counter, timings and the loss history.

    There is no RNG state or data position to keep: step ``s`` trains on batch ``j = s % cfg.steps_per_pool`` of
    pool ``k = s // cfg.steps_per_pool``, and every draw (pool indices, augmentation, noise, sigma, dropout) is
    seeded by (seed, rank, k or s) (:mod:`aotbench.seeds`). fp16's loss scale is not kept either, so an fp16 run
    resumes with the initial scale.

    - ``model``, ``ema``: :class:`aotbench.objective.Denoiser` on the training device; ``ema`` in eval mode, no grad;
    - ``opt``: Adam over ``model``'s parameters;
    - ``step``: optimizer steps taken (``step * cfg.batch`` images seen);
    - ``timing``: seconds, keyed by :data:`TIMINGS`: wall time inside the training loop across resumes, time
      inside the pairing (wherever it ran), time the trainer waited for a paired pool;
    - ``history``: ``(step, loss)`` pairs, the loss being the objective's per-sample loss averaged over the global
      batch and over the steps since the previous pair (or since the run was resumed: the window is not kept);
    - ``coupling``: per rank, the summed coupling statistics of every pool it trained on so far
      (:func:`aotbench.pool.add_stats`), None before the first (:func:`coupling_diagnostics` sums the ranks),
      and None for good in a run resumed from a checkpoint written before they were kept: summing only the pools
      after the resume would be a partial number under the full run's name, so the evaluation replays them all;
    - ``pairing_state``: a stateful pairing's state per rank, as it must be to pair the pool that holds ``step``
      (None for stateless pairings).
    """

    cfg: TrainConfig
    model: Denoiser
    ema: Denoiser
    opt: torch.optim.Optimizer
    step: int = 0
    timing: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMINGS, 0.0))
    history: list[tuple[int, float]] = field(default_factory=list)
    coupling: dict[int, dict] | None = None
    pairing_state: dict[int, dict] | None = None
    coupling_lost: bool = False

    @classmethod
    def fresh(cls, cfg: TrainConfig, model: Denoiser) -> TrainState:
        """Step 0 of ``model``: its EMA a copy of it, and Adam at ``cfg.lr`` with EDM's betas (0.9, 0.999) and
        eps 1e-8 (EDM's ``train.py`` optimizer settings)."""
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
        return cls(cfg, model, ema, opt)

    def load(self, ckpt: dict) -> None:
        """Take over a checkpoint of this configuration (:func:`read_model_checkpoint`): weights, EMA, optimizer
        state, step, timings and history."""
        self.model.load_state_dict(ckpt["net"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["opt"])
        self.step, self.timing, self.history = ckpt["step"], dict(ckpt["timing"]), [tuple(h) for h in ckpt["history"]]
        self.coupling, self.pairing_state = ckpt.get("coupling"), ckpt.get("pairing_state")
        self.coupling_lost = self.coupling is None and self.step > 0

    def save(self, path: Path) -> None:
        """Write the checkpoint to ``path`` atomically, sealed with its sha256 (:func:`aotbench.storage.
        atomic_torch_save`).

        Format ``aotbench-model-v1``, a dict read back with ``weights_only=True``: ``format``, ``train_key``,
        ``config`` (``TrainConfig.to_dict()``), ``step``, ``done`` (``step >= cfg.train_steps``), the state dicts
        ``net``, ``ema`` and ``opt``, ``timing``, ``history`` (pairs as lists), ``coupling`` (summed pool
        statistics, or None) and, for a stateful pairing, ``pairing_state`` (rank -> state dict of tensors).
        Checkpoints written before ``coupling`` existed lack it (:func:`coupling_diagnostics` replays it).
        """
        extra = {} if self.pairing_state is None else {"pairing_state": self.pairing_state}
        atomic_torch_save(path, {
            "format": CKPT_FORMAT, "train_key": self.cfg.key, "config": self.cfg.to_dict(), "step": self.step,
            "done": self.step >= self.cfg.train_steps, "net": self.model.state_dict(), "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(), "timing": dict(self.timing), "history": [list(h) for h in self.history],
            "coupling": self.coupling, **extra})

    def update_ema(self) -> None:
        """EDM's EMA (``training_loop.py``, "Update EMA"): every parameter ``ema <- beta ema + (1 - beta) model``,
        with ``beta`` for a half-life of ``cfg.ema_halflife_img`` images, capped at ``cfg.ema_rampup_ratio`` times
        the images seen, this step's included (:func:`aotbench.edm.ema_beta`); buffers are copied."""
        cfg = self.cfg
        beta = edm.ema_beta(cfg.batch, self.step * cfg.batch, cfg.ema_halflife_img, cfg.ema_rampup_ratio)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()], 1 - beta)
            for be, bm in zip(self.ema.buffers(), self.model.buffers()):
                be.copy_(bm)


def read_model_checkpoint(path: Path, cfg: TrainConfig) -> dict:
    """The checkpoint at ``path`` (the dict :meth:`TrainState.save` writes), which must be of exactly ``cfg``.

    Raises :class:`UserError` (one line) for a missing, damaged, unsealed, unsafe or foreign file
    (:func:`aotbench.storage.load_checkpoint`) and for a checkpoint of another configuration.
    """
    ckpt = load_checkpoint(path, CKPT_FORMAT)
    if ckpt.get("train_key") != cfg.key:
        raise UserError(f"checkpoint {path} belongs to another configuration "
                        f"(train_key {ckpt.get('train_key')}, expected {cfg.key})")
    return ckpt


class _StopFlag:
    """SIGTERM/SIGUSR2 -> finish the current step, checkpoint, stop (installed only in the main thread).

    A context manager: leaving it puts the previous handlers back."""

    def __init__(self, enabled: bool, signals: tuple | None = None):
        self.signum = None
        self._old = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for s in signals or (signal.SIGTERM, signal.SIGUSR2):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, _frame):
        self.signum = signum

    def __enter__(self) -> _StopFlag:
        return self

    def __exit__(self, *_exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def resolve_workers(opts: TrainOptions, device: torch.device) -> int:
    """The number of background pairing processes: ``opts.pair_workers``, or auto (see :class:`TrainOptions`)."""
    if opts.pair_workers is not None:
        return opts.pair_workers
    return 1 if device.type == "cuda" or (os.cpu_count() or 1) > torch.get_num_threads() else 0


def _pairings(registry: Registry, cfg: TrainConfig, n_items: int, ranks: list[int],
              states: dict[int, dict] | None) -> dict[int, object]:
    """One pairing instance per rank (a stateful one keeps each rank's own state): a stateful pairing is started
    with the number of training items and a seed derived from (seed, rank), then given its checkpointed state.

    Raises UserError (one line) for a stateful pairing over global pools, and for a state it refuses (ValueError:
    e.g. written for a dataset of another size)."""
    comp = registry.get("pairing", cfg.pairing.name)
    out = {r: comp.build(**cfg.pairing.kwargs) for r in ranks}
    if not is_stateful(out[ranks[0]]):
        return out
    if cfg.global_pool:
        raise UserError(f"pairing '{cfg.pairing.name}' keeps per-item state on each rank; it cannot pair global "
                        f"pools (set global_pool false)")
    for r, pairing in out.items():
        pairing.start(n_items, derive("pairing", cfg.seed, r))
        if states is not None:
            try:
                pairing.load_state_dict(states[r])
            except (ValueError, KeyError) as err:
                raise UserError(f"pairing '{cfg.pairing.name}' cannot resume from its checkpointed state: "
                                f"{err}") from None
    return out


def _pool_stream(registry: Registry, cfg: TrainConfig, splits: Splits, ranks: list[int], step: int,
                 pairing_state: dict | None, device: torch.device, opts: TrainOptions) -> Iterator[dict[int, Pool]]:
    """The paired pools of ``ranks`` (AOT: one assignment per pool of ``cfg.pool`` samples, per rank as in the
    paper, or over all ranks' pools together with ``cfg.global_pool``), from the pool that holds ``step`` to
    the last one, paired ahead by background workers when there are any. A stateful pairing starts from
    ``pairing_state`` (rank -> state; None: fresh).

    Raises :class:`UserError` for a pairing that cannot be pickled to a worker, a stateful pairing with more than
    one worker or over global pools (:func:`aotbench.pool.iter_pools`, :func:`_pairings`).
    """
    all_ranks = list(range(cfg.ranks)) if cfg.global_pool else ranks
    pairings = _pairings(registry, cfg, splits.train.shape[0], all_ranks, pairing_state)
    augment = None
    if cfg.augment_p > 0:
        from .augment import AugmentPipe
        augment = AugmentPipe(p=cfg.augment_p)
    labels = splits.train_labels if cfg.conditional else None
    workers = resolve_workers(opts, device)
    # A forked worker must not start an OpenMP pool its parent already started (libgomp hangs), nor touch CUDA:
    # more than one pairing thread, or a CUDA trainer, gets a spawned worker instead.
    context = "spawn" if opts.pair_threads > 1 or device.type == "cuda" else None
    first, last = step // cfg.steps_per_pool, math.ceil(cfg.train_steps / cfg.steps_per_pool)
    ks_rows = math.ceil(KS_SAMPLES / (last * cfg.ranks))
    sources = {r: PoolSource(splits.train, labels, cfg.pool, cfg.seed, r, pairings[r], cfg.pairing.name, augment,
                             ks_rows) for r in all_ranks}
    return iter_pools(RankPools(sources, ranks, cfg.global_pool), first, last, workers, opts.pair_threads, context)


def _next_pools(stream: Iterator[dict[int, Pool]], k: int, cfg: TrainConfig, objective,
                timing: dict[str, float]) -> tuple[dict[int, Pool], dict[int, torch.Tensor]]:
    """Pool ``k`` of every rank, and its training noise levels ([cfg.pool] sigmas from the ``objective``'s
    distribution, EDM's log-normal by default, drawn after pairing from a generator seeded by (seed, rank, k));
    adds the pairing and waiting time to ``timing``."""
    t_wait = time.perf_counter()
    pools = next(stream)
    sigmas = {}
    for r, pool in pools.items():
        assert pool.k == k
        sigmas[r] = objective.sample_sigma(cfg.pool, generator("sigma", cfg.seed, r, k))
        timing["pair_seconds"] += pool.pair_seconds
    timing["pair_wait_seconds"] += time.perf_counter() - t_wait
    return pools, sigmas


def _take_pools(state: TrainState, pools: dict[int, Pool]) -> None:
    """A pool's first step: add its coupling statistics to the model's (a run resumed mid-pool has them already)."""
    if state.coupling_lost:
        return
    state.coupling = dict(state.coupling or {})
    for r, pool in pools.items():
        state.coupling[r] = add_stats(state.coupling.get(r), pool.stats)


def _pairing_state(state: TrainState, pools: dict[int, Pool]) -> dict[int, dict] | None:
    """What a checkpoint at ``state.step`` must hold of a stateful pairing: the state that pairs the pool a resumed
    run starts with (this pool again mid-pool, the next one at a pool boundary). None for stateless pairings."""
    if not pools or next(iter(pools.values())).state_before is None:
        return state.pairing_state
    boundary = state.step % state.cfg.steps_per_pool == 0
    return {r: p.state_after if boundary else p.state_before for r, p in pools.items()}


def _drop_labels(labels: torch.Tensor | None, p: float, num_classes: int) -> torch.Tensor | None:
    """Label dropout (for classifier-free guidance): each of the [b] labels becomes the "no label" index
    ``num_classes`` with probability ``p``, drawn from the global generator."""
    if labels is None or p <= 0:
        return labels
    drop = torch.rand(labels.shape[0]) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward pass's autocast for ``precision`` (disabled for fp32)."""
    dtype = _AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _accumulate_gradients(net: torch.nn.Module, state: TrainState, scaler: torch.amp.GradScaler,
                          pools: dict[int, Pool], sigmas: dict[int, torch.Tensor], j: int, num_classes: int,
                          device: torch.device) -> float:
    """EDM's "Accumulate gradients" for batch ``j`` of every rank's pool, in ``cfg.grad_accum`` rounds per rank.

    ``net`` is the model, or its DDP wrapper (which then all-reduces the gradients in each rank's last round only).
    Each rank's dropout and label dropout are seeded by (seed, rank, step). The loss of each round is the
    objective's weighted denoising loss (:func:`aotbench.objective.denoising_loss`) averaged over the round's samples
    and divided by rounds x ranks, so the gradients and the returned float are those of the mean loss over the global
    batch.
    """
    cfg = state.cfg
    b, rounds = cfg.rank_batch, cfg.grad_accum
    m = b // rounds
    distributed = isinstance(net, torch.nn.parallel.DistributedDataParallel)
    step_loss = 0.0
    for r, pool in pools.items():
        batch = pool.batch(j, b)
        torch.manual_seed(derive("step", cfg.seed, r, state.step))
        labels = _drop_labels(batch["labels"], cfg.label_dropout, num_classes)
        tensors = (batch["y"], batch["noise"], sigmas[r][j * b:(j + 1) * b], labels, batch["augment_labels"])
        for a in range(rounds):
            args = [None if t is None else t[a * m:(a + 1) * m].to(device) for t in tensors]
            no_sync = net.no_sync() if distributed and a < rounds - 1 else contextlib.nullcontext()
            with no_sync, _autocast(device, cfg.precision):
                loss = denoising_loss(net, state.model.objective, *args).mean() / (rounds * len(pools))
            scaler.scale(loss).backward()
            step_loss += float(loss.detach())
    return step_loss


def optimizer_step(state: TrainState, scaler: torch.amp.GradScaler) -> None:
    """EDM's "Update weights": one Adam step on the accumulated gradients, then one more on ``state.step``.

    The learning rate ramps up linearly over ``cfg.lr_rampup_img`` images (:func:`aotbench.edm.lr_at`, at
    ``state.step * cfg.batch`` images seen before this step), as in EDM's ``training_loop.py``. ``scaler`` (fp16)
    unscales the gradients, skips the step if they overflowed and updates its scale; disabled, it steps plainly.
    EDM's ``nan_to_num`` on the gradients has no counterpart: a non-finite loss stops training before this step.
    """
    cfg = state.cfg
    for g in state.opt.param_groups:
        g["lr"] = edm.lr_at(cfg.lr, state.step * cfg.batch, cfg.lr_rampup_img)
    scaler.step(state.opt)
    scaler.update()
    state.step += 1


def _agree(step_loss: float, stop: _StopFlag, world_size: int, device: torch.device) -> tuple[float, int | None]:
    """DDP, once per step: the mean loss over ranks (what the single-process simulation reports, so a NaN stops
    every rank at once) and the largest stop signal any rank has seen so far (None if none), the same on every
    rank, so that all ranks checkpoint and stop at the same step instead of deadlocking in a collective."""
    import torch.distributed as dist

    loss = torch.tensor([step_loss], dtype=torch.float64, device=device)
    sig = torch.tensor([stop.signum or 0], dtype=torch.int64, device=device)
    dist.all_reduce(loss, op=dist.ReduceOp.SUM)
    dist.all_reduce(sig, op=dist.ReduceOp.MAX)
    return loss.item() / world_size, int(sig.item()) or None


def _check_finite(step_loss: float, state: TrainState, path: Path) -> None:
    """Refuse a NaN or infinite loss in one line, before it reaches the weights (the last checkpoint stays)."""
    if math.isfinite(step_loss):
        return
    kept = f"the last checkpoint {path} is kept" if path.exists() else "no checkpoint was written yet"
    raise UserError(f"training loss became {step_loss} at step {state.step} (lr {state.cfg.lr}); {kept}; lower "
                    f"the lr or check the data")


def _save(state: TrainState, path: Path, leader: bool, distributed: bool) -> None:
    """The leader (rank 0) writes the checkpoint; under DDP every rank then waits for it. Under DDP the per-rank
    coupling statistics and stateful-pairing states are gathered from every rank into the leader's checkpoint
    (each rank keeps training on its own)."""
    out = state
    if distributed:
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (state.pairing_state, state.coupling))
        merged = [{r: v for d in part for r, v in (d or {}).items()} or None for part in zip(*gathered)]
        out = dataclasses.replace(state, pairing_state=merged[0], coupling=merged[1])
    if leader:
        out.save(path)
    if distributed:
        torch.distributed.barrier()


def train_model(registry: Registry, cfg: TrainConfig, path: Path, opts: TrainOptions | None = None) -> dict:
    """Train the model of ``cfg`` into the checkpoint at ``path``: from scratch, resumed from the checkpoint there,
    or, when that checkpoint is done, just read.

    EDM's training loop (``training/training_loop.py``) on AOT pools: ``cfg.train_steps`` optimizer steps of
    ``cfg.batch`` samples over ``cfg.ranks`` ranks, each rank training on ``cfg.rank_batch`` samples of its own
    paired pool of ``cfg.pool``. With ``opts.world_size > 1`` this process is rank ``opts.world_rank`` of a DDP
    run; else it simulates all ``cfg.ranks`` ranks itself. The checkpoint is written every ``opts.ckpt_every``
    steps, at the end, and after the step in which a stop signal arrived.

    Returns the final checkpoint (the dict :meth:`TrainState.save` writes). Raises :class:`UserError` (one line)
    for data that no longer matches ``cfg``, a network or pairing that refuses the data or its workers, a damaged
    checkpoint or one of another configuration, a world size other than ``cfg.ranks``, and a non-finite loss;
    :class:`Interrupted` after a stop signal (the checkpoint is written: rerun to resume). An exception from
    ``opts.on_step`` stops training with the last checkpoint as it was.
    """
    # Initialize.
    opts = opts or TrainOptions()
    path = Path(path)
    splits = load_splits(registry, cfg.dataset)
    check_bound(splits, cfg)
    device = torch.device(opts.device)
    _set_tf32(device, cfg.precision)

    # Construct the network, its EMA and the optimizer; resume from the checkpoint, if there is one.
    state = TrainState.fresh(cfg, build_model(registry, cfg, splits).to(device).train())
    if path.exists():
        ckpt = read_model_checkpoint(path, cfg)
        if ckpt["done"]:
            return ckpt
        state.load(ckpt)

    # Place this process: under DDP it trains its own rank, else it simulates every rank.
    distributed = opts.world_size > 1
    if distributed and opts.world_size != cfg.ranks:
        raise UserError(f"launched with {opts.world_size} processes but the config has ranks={cfg.ranks}")
    my_ranks = [opts.world_rank] if distributed else list(range(cfg.ranks))
    net = state.model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            state.model, device_ids=[device.index] if device.type == "cuda" else None)

    # Start the pools, from the one this step is in, and the loss scaler (active for fp16 only).
    stream = _pool_stream(registry, cfg, splits, my_ranks, state.step, state.pairing_state, device, opts)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # Train.
    leader = opts.world_rank == 0
    pools, sigmas = {}, {}
    running, n_running = 0.0, 0
    t_start = time.perf_counter()
    with (contextlib.closing(stream), _StopFlag(opts.handle_signals, opts.stop_signals) as stop,
          bar(total=cfg.train_steps, initial=state.step, desc=f"train {cfg.pairing.name}", disable=not opts.progress,
              unit="step") as pb):
        while state.step < cfg.train_steps:

            # Fetch the next pool: at its first step (adding its coupling statistics), and at the first step after
            # resuming mid-pool.
            k, j = divmod(state.step, cfg.steps_per_pool)
            if j == 0 or not pools:
                pools, sigmas = _next_pools(stream, k, cfg, state.model.objective, state.timing)
                if j == 0:
                    _take_pools(state, pools)

            # Accumulate gradients.
            state.opt.zero_grad(set_to_none=True)
            step_loss = _accumulate_gradients(net, state, scaler, pools, sigmas, j, splits.num_classes, device)

            # Agree across DDP ranks on the loss and on a stop signal; stop on a non-finite loss.
            if distributed:
                step_loss, agreed_signal = _agree(step_loss, stop, opts.world_size, device)
            _check_finite(step_loss, state, path)

            # Update weights.
            optimizer_step(state, scaler)

            # Update EMA.
            state.update_ema()

            # Report the loss: the history keeps its mean over each log_every steps, on_step sees every step's.
            running, n_running = running + step_loss, n_running + 1
            if state.step % opts.log_every == 0 or state.step == cfg.train_steps:
                state.history.append((state.step, running / n_running))
                pb.set_postfix(loss=f"{running / n_running:.4f}")
                running, n_running = 0.0, 0
            pb.update()
            if opts.on_step is not None:
                opts.on_step(state.step, step_loss)

            # Save the training state every ckpt_every steps, at the end, and on a stop signal. Under DDP only the
            # signal every rank agreed on in this step counts (one that arrives later on one rank is agreed on in
            # the next step), so all ranks checkpoint and stop together.
            signum = agreed_signal if distributed else stop.signum
            snap = opts.snapshots.get(state.step)
            checkpoint = signum is not None or state.step % opts.ckpt_every == 0 or state.step == cfg.train_steps
            if snap is not None or checkpoint:
                state.pairing_state = _pairing_state(state, pools)
                state.timing["train_seconds"] += time.perf_counter() - t_start
                t_start = time.perf_counter()
            if snap is not None and state.step < cfg.train_steps and not Path(snap).exists():
                _save(dataclasses.replace(state, cfg=snapshot_config(cfg, state.step)), Path(snap), leader,
                      distributed)
            if checkpoint:
                _save(state, path, leader, distributed)

            # Check for abort.
            if signum is not None:
                raise Interrupted(f"training stopped by signal {signum} at step {state.step}/{cfg.train_steps}; "
                                  f"checkpoint written to {path}; rerun to resume")

    # Done: every rank returns the checkpoint the leader wrote last.
    return load_checkpoint(path, CKPT_FORMAT)


def load_ema(registry: Registry, cfg: TrainConfig, ckpt: dict, device="cpu") -> Denoiser:
    """The EMA denoiser D(x; sigma) of a checkpoint of ``cfg`` (the dict :func:`train_model` returns), on
    ``device``, in eval mode without gradients: what every sampler and metric evaluates (EDM samples its EMA).

    Raises :class:`UserError` as :func:`build_model` does, and ``RuntimeError`` for weights of another network.
    """
    splits = load_splits(registry, cfg.dataset)
    model = build_model(registry, cfg, splits)
    model.load_state_dict(ckpt["ema"])
    return model.to(device).eval().requires_grad_(False)


def coupling_diagnostics(registry: Registry, cfg: TrainConfig, ckpt: dict) -> dict[str, float]:
    """The coupling diagnostics of a finished model (:func:`aotbench.pool.coupling_summary`): from the statistics
    its checkpoint summed during training, or, for a checkpoint written before they were kept, by replaying its
    pairing over the same pools in line (pools are a pure function of their coordinates, and a stateful pairing's
    state of the pools before them, so the replay sums exactly what training would have)."""
    per_rank = ckpt.get("coupling")
    if per_rank is None:
        splits = load_splits(registry, cfg.dataset)
        per_rank = {}
        ranks = list(range(cfg.ranks))
        with contextlib.closing(_pool_stream(registry, cfg, splits, ranks, 0, None, torch.device("cpu"),
                                             TrainOptions(pair_workers=0))) as stream:
            for pools in stream:
                for r, pool in pools.items():
                    per_rank[r] = add_stats(per_rank.get(r), pool.stats)
    total = None
    for r in sorted(per_rank):
        total = add_stats(total, per_rank[r])
    return coupling_summary(total)
