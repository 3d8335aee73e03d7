"""The training engine: EDM loss on AOT-paired pools, EMA, atomic checkpoints and exact resume.

One cycle per pool: draw a pool of P samples and P standard-normal noises, pair them once
with the pairing plugin, then consume the pool in P/b optimizer steps (b = per-rank batch), drawing each sample's
sigma after pairing. Pools are paired ahead in a background worker (:func:`aotbench.pool.iter_pools`).

Every random draw is seeded by its coordinates (seed, rank, pool or step), and the checkpoint holds the model, EMA
and optimizer, so a run resumed from any checkpoint ends with bit-identical weights to an uninterrupted one
(on the same device and thread count).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import edm
from .config import Choice, TrainConfig
from .data import Splits
from .datasets import check_bound, load_splits
from .errors import UserError
from .plugins import Registry
from .pool import PoolSource, iter_pools
from .progress import bar
from .seeds import derive, generator
from .storage import atomic_torch_save, load_checkpoint

CKPT_FORMAT = "aotbench-model-v1"


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; rerunning resumes it."""


@dataclass
class TrainOptions:
    """How to run training (not part of the model's identity)."""

    device: str = "cpu"
    ckpt_every: int = 500
    #: background pairing processes; None = auto: one when a core is left over (a GPU run, or more cores than
    #: torch threads), else pair in line (on a 2-core laptop a worker would only fight the trainer for cores)
    pair_workers: int | None = None
    pair_threads: int = 1
    progress: bool = True
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


def build_model(registry: Registry, cfg: TrainConfig, splits: Splits) -> edm.Precond:
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
    return edm.Precond(net, num_classes=num_classes)


def _set_tf32(device: torch.device, precision: str) -> None:
    """fp32 means fp32: TF32 matmuls and convolutions off on CUDA, as EDM's training loop sets them."""
    if device.type == "cuda" and precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _fresh_state(model, cfg):
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    return ema, opt


def _checkpoint(path, cfg, step, model, ema, opt, timing, history):
    atomic_torch_save(path, {
        "format": CKPT_FORMAT, "train_key": cfg.key, "config": cfg.to_dict(), "step": step, "done": step >= cfg.steps,
        "net": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
        "timing": dict(timing), "history": [list(h) for h in history]})


def read_model_checkpoint(path: Path, cfg: TrainConfig) -> dict:
    """A checkpoint of exactly this configuration (else a one-line error)."""
    ckpt = load_checkpoint(path, CKPT_FORMAT)
    if ckpt.get("train_key") != cfg.key:
        raise UserError(f"checkpoint {path} belongs to another configuration "
                        f"(train_key {ckpt.get('train_key')}, expected {cfg.key})")
    return ckpt


class _StopFlag:
    """SIGTERM/SIGUSR2 -> finish the current step, checkpoint, stop (installed only in the main thread)."""

    def __init__(self, enabled: bool, signals: tuple | None = None):
        self.signum = None
        self._old = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for s in signals or (signal.SIGTERM, signal.SIGUSR2):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, _frame):
        self.signum = signum

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def train_model(registry: Registry, cfg: TrainConfig, path: Path, opts: TrainOptions | None = None) -> dict:
    """Train (or resume, or just load) the model of ``cfg`` at ``path``; returns the final checkpoint dict."""
    opts = opts or TrainOptions()
    path = Path(path)
    splits = load_splits(registry, cfg.dataset)
    check_bound(splits, cfg)
    device = torch.device(opts.device)
    _set_tf32(device, cfg.precision)
    model = build_model(registry, cfg, splits).to(device).train()
    ema, opt = _fresh_state(model, cfg)
    step, timing, history = 0, {"train_seconds": 0.0, "pair_seconds": 0.0, "pair_wait_seconds": 0.0}, []
    if path.exists():
        ckpt = read_model_checkpoint(path, cfg)
        if ckpt["done"]:
            return ckpt
        model.load_state_dict(ckpt["net"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        step, timing, history = ckpt["step"], dict(ckpt["timing"]), [tuple(h) for h in ckpt["history"]]

    distributed = opts.world_size > 1
    if distributed and opts.world_size != cfg.ranks:
        raise UserError(f"launched with {opts.world_size} processes but the config has ranks={cfg.ranks}")
    my_ranks = [opts.world_rank] if distributed else list(range(cfg.ranks))
    wrapped = model
    if distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    pairing = registry.get("pairing", cfg.pairing.name).build(**cfg.pairing.kwargs)
    augment = None
    if cfg.augment_p > 0:
        from .augment import AugmentPipe
        augment = AugmentPipe(p=cfg.augment_p)
    labels = splits.train_labels if cfg.conditional else None
    sources = {r: PoolSource(splits.train, labels, cfg.pool, cfg.seed, r, pairing, cfg.pairing.name, augment)
               for r in my_ranks}
    workers = opts.pair_workers
    if workers is None:
        workers = 1 if device.type == "cuda" or (os.cpu_count() or 1) > torch.get_num_threads() else 0
    b, spp = cfg.rank_batch, cfg.steps_per_pool
    first_pool, last_pool = step // spp, math.ceil(cfg.steps / spp)
    # A forked worker must not start an OpenMP pool its parent already started (libgomp hangs), nor touch CUDA:
    # more than one pairing thread, or a CUDA trainer, gets a spawned worker instead.
    context = "spawn" if opts.pair_threads > 1 or device.type == "cuda" else None
    streams = {r: iter_pools(sources[r], first_pool, last_pool, workers, opts.pair_threads, context)
               for r in my_ranks}
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    stop = _StopFlag(opts.handle_signals, opts.stop_signals)
    pools, sigmas = {}, {}
    running, n_running = 0.0, 0
    t_start = time.perf_counter()
    try:
        with bar(total=cfg.steps, initial=step, desc=f"train {cfg.pairing.name}", disable=not opts.progress,
                 unit="step") as pb:
            while step < cfg.steps:
                k, j = divmod(step, spp)
                if j == 0 or not pools:
                    t_wait = time.perf_counter()
                    for r in my_ranks:
                        pools[r] = next(streams[r])
                        assert pools[r].k == k
                        sigmas[r] = edm.sample_sigma(cfg.pool, generator("sigma", cfg.seed, r, k))
                        timing["pair_seconds"] += pools[r].pair_seconds
                    timing["pair_wait_seconds"] += time.perf_counter() - t_wait
                for g in opt.param_groups:
                    g["lr"] = edm.lr_at(cfg.lr, step * cfg.batch, cfg.lr_rampup_img)
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for r in my_ranks:
                    batch = pools[r].batch(j, b)
                    sigma = sigmas[r][j * b:(j + 1) * b]
                    torch.manual_seed(derive("step", cfg.seed, r, step))  # dropout and label dropout
                    cls = batch["labels"]
                    if cls is not None and cfg.label_dropout > 0:
                        drop = torch.rand(cls.shape[0]) < cfg.label_dropout
                        cls = torch.where(drop, torch.full_like(cls, splits.num_classes), cls)
                    m = b // cfg.grad_accum
                    for a in range(cfg.grad_accum):
                        sl = slice(a * m, (a + 1) * m)
                        args = [t[sl].to(device) if t is not None else None
                                for t in (batch["y"], batch["noise"], sigma, cls, batch["augment_labels"])]
                        sync = not distributed or a == cfg.grad_accum - 1
                        ctx = wrapped.no_sync() if not sync else contextlib.nullcontext()
                        with ctx, torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                 enabled=autocast_dtype is not None):
                            loss = edm.edm_loss(wrapped, *args).mean() / (cfg.grad_accum * len(my_ranks))
                        scaler.scale(loss).backward()
                        step_loss += float(loss.detach())
                if distributed:
                    step_loss, agreed_signal = _agree(step_loss, stop, opts.world_size, device)
                if not math.isfinite(step_loss):
                    kept = f"the last checkpoint {path} is kept" if path.exists() else "no checkpoint was written yet"
                    raise UserError(f"training loss became {step_loss} at step {step} (lr {cfg.lr}); {kept}; lower "
                                    f"the lr or check the data")
                scaler.step(opt)
                scaler.update()
                step += 1
                beta = edm.ema_beta(cfg.batch, step * cfg.batch, cfg.ema_halflife_img, cfg.ema_rampup_ratio)
                with torch.no_grad():
                    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - beta)
                    for be, bm in zip(ema.buffers(), model.buffers()):
                        be.copy_(bm)
                running, n_running = running + step_loss, n_running + 1
                if step % opts.log_every == 0 or step == cfg.steps:
                    history.append((step, running / n_running))
                    pb.set_postfix(loss=f"{running / n_running:.4f}")
                    running, n_running = 0.0, 0
                pb.update()
                if opts.on_step is not None:
                    opts.on_step(step, step_loss)
                leader = opts.world_rank == 0
                # DDP: act only on the signal every rank agreed on in this step (one that arrives later on one
                # rank is agreed on in the next step), so all ranks checkpoint and stop together
                signum = agreed_signal if distributed else stop.signum
                if signum is not None or step % opts.ckpt_every == 0 or step == cfg.steps:
                    timing["train_seconds"] += time.perf_counter() - t_start
                    t_start = time.perf_counter()
                    if leader:
                        _checkpoint(path, cfg, step, model, ema, opt, timing, history)
                    if distributed:
                        torch.distributed.barrier()
                    if signum is not None:
                        raise Interrupted(f"training stopped by signal {signum} at step {step}/{cfg.steps}; "
                                          f"checkpoint written to {path}; rerun to resume")
    finally:
        stop.restore()
        for s in streams.values():
            s.close()
    return load_checkpoint(path, CKPT_FORMAT)


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


def load_ema(registry: Registry, cfg: TrainConfig, ckpt: dict, device="cpu") -> edm.Precond:
    """The EMA denoiser of a finished checkpoint, in eval mode."""
    splits = load_splits(registry, cfg.dataset)
    model = build_model(registry, cfg, splits)
    model.load_state_dict(ckpt["ema"])
    return model.to(device).eval().requires_grad_(False)
