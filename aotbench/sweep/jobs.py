"""The functions a job runs on its node: train one model, or evaluate a few cells of one model.

This is the only sweep code a launcher ships to a node (submitit pickles these callables and their JSON-able
payloads); it imports nothing of the orchestrator. Both are plain callables of one dict, so a launcher that does not
use submitit can run them too. Under submitit they are ``Checkpointable``: on the preemption/timeout signal (USR2)
training finishes its step, writes an atomic checkpoint, and submitit requeues the job with the same payload, which
resumes from that checkpoint (the final weights and records are those of an uninterrupted run).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import submitit

from .outcome import outcome_path, with_outcome


def _outcome_target() -> Path | None:
    """This job's outcome file: ``$AOTBENCH_OUTCOME`` when a launcher sets it (one that does not use submitit), else
    the file beside submitit's files of this job and task; None for a plain call or submitit's debug executor, whose
    jobs run in the sweep's own process (the debug launcher reports for them)."""
    if os.environ.get("AOTBENCH_OUTCOME"):
        return Path(os.environ["AOTBENCH_OUTCOME"])
    folder = os.environ.get("SUBMITIT_FOLDER")
    if not folder:
        return None
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # no submitit environment is active
        return None
    if env.cluster == "debug":
        return None
    return outcome_path(Path(folder), env.job_id, env.global_rank)


class _Threads:
    """torch's thread count set for one job and restored after it (the debug launcher runs jobs in-process)."""

    def __init__(self, options: dict):
        self.threads = options.get("threads")

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def _train_options(options: dict, device: str, world=None):
    from ..train import TrainOptions

    usr = submitit.JobEnvironment._usr_sig()
    return TrainOptions(device=device, ckpt_every=int(options.get("ckpt_every", 500)),
                        pair_workers=options.get("pair_workers"), pair_threads=int(options.get("pair_threads", 1)),
                        progress=True, handle_signals=True, stop_signals=(usr,),
                        world_rank=world.rank if world else 0, world_size=world.world_size if world else 1)


def _hand_over_to_submitit(err: Exception) -> None:
    """Training stopped on the preemption signal after writing its checkpoint: now let submitit's own handler
    requeue the job (its checkpoint protocol), which exits this process. Without a submitit handler (debug
    launcher, plain call) the interruption is re-raised."""
    print(f"aotbench: {err}", file=sys.stderr, flush=True)
    usr = submitit.JobEnvironment._usr_sig()
    handler = signal.getsignal(usr)
    if isinstance(getattr(handler, "__self__", None), submitit.core.job_environment.SignalHandler):
        handler(usr, None)  # leader: checkpoint() + requeue + sys.exit; other ranks: returns
        raise SystemExit(-1)  # not the leader: exit without a result; the leader's requeue restarts every task
    raise err


class TrainJob(submitit.helpers.Checkpointable):
    """``train_job({"train": TrainConfig dict, "train_key", "results": dir, "options": {...}})`` trains one model into
    ``RESULTS/models/<train_key>.pt``. With ``options["ddp"]`` and several tasks it joins a DDP process group (one
    task per rank). Raises RuntimeError when the payload's key no longer matches its config (aotbench upgraded
    between submission and run)."""

    def __call__(self, payload: dict) -> dict:
        return with_outcome(_outcome_target(), "train", self._train, payload)

    def _train(self, payload: dict) -> dict:
        from .. import distributed
        from ..config import TrainConfig
        from ..plugins import get_registry
        from ..records import Workspace
        from ..train import Interrupted, train_model

        options = payload.get("options", {})
        cfg = TrainConfig.from_dict(payload["train"])
        if payload.get("train_key") and cfg.key != payload["train_key"]:
            raise RuntimeError(f"train key mismatch: payload {payload['train_key']}, rebuilt {cfg.key} "
                               f"(was aotbench upgraded between submission and run?)")
        with _Threads(options):
            world = distributed.init(options.get("device", "auto"), submitit_tasks=bool(options.get("ddp")))
            try:
                device = world.device(options.get("device", "auto"))
                ws = Workspace(Path(payload["results"]))
                train_opts = _train_options(options, device, world)
                train_opts.snapshots = {int(s): ws.model_path(k) for s, k in payload.get("snapshots", {}).items()}
                try:
                    ckpt = train_model(get_registry(), cfg, ws.model_path(cfg.key), train_opts)
                except Interrupted as err:
                    _hand_over_to_submitit(err)
                return {"train_key": cfg.key, "step": int(ckpt["step"]), "rank": world.rank,
                        "world_size": world.world_size}
            finally:
                distributed.shutdown(world)


class EvalJob(submitit.helpers.Checkpointable):
    """``eval_job({"cells": [CellConfig dicts], "keys", "experiment", "results", "options"})`` writes exactly the
    records ``run`` writes (``runner.run_model``); a cell with a complete record is skipped, so a requeued job
    continues with the cells it had not finished. Raises RuntimeError on a key mismatch (see :class:`TrainJob`)."""

    def __call__(self, payload: dict) -> dict:
        return with_outcome(_outcome_target(), "eval", self._eval, payload)

    def _eval(self, payload: dict) -> dict:
        from ..config import CellConfig
        from ..devices import resolve_device
        from ..plugins import get_registry
        from ..records import Workspace
        from ..runner import RunOptions, group_by_model, run_model
        from ..train import Interrupted

        options = payload.get("options", {})
        cells = [CellConfig.from_dict(d) for d in payload["cells"]]
        keys = payload.get("keys")
        if keys and [c.key for c in cells] != list(keys):
            raise RuntimeError("cell key mismatch between submission and job (was aotbench upgraded in between?)")
        with _Threads(options):
            device = resolve_device(options.get("device", "auto"))
            opts = RunOptions(device=device, eval_batch=int(options.get("eval_batch", 2000)),
                              force=bool(options.get("force")), progress=True,
                              train=_train_options(options, device))
            ws = Workspace(Path(payload["results"]))
            written = []
            try:
                for group in group_by_model(cells).values():
                    run_model(get_registry(), group, ws, payload["experiment"], opts)
                    written += [c.key for c in group]
            except Interrupted as err:
                _hand_over_to_submitit(err)
            return {"cells": written}


#: the job functions (importable top-level callables taking one JSON-able dict)
train_job = TrainJob()
eval_job = EvalJob()
