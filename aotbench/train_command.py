"""``python -m aotbench train --config CFG``: train one model outside a sweep (under torchrun: one DDP rank per
process), from a TrainConfig JSON, a cell config, a record, or a key."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from .errors import UserError


def resolve_train_config(registry, text: str, results: Path):
    """A TrainConfig from ``--config``: a JSON file holding a TrainConfig (plugin choices as ``"name:k=v"`` strings
    or tables, defaults filled in), a cell config (its ``train``) or a record (its ``config.train``); or a key: a
    train key with a checkpoint in RESULTS/models, or a cell key with a record in RESULTS/*/cells."""
    from .config import TRAIN_CHOICES, TrainConfig, resolve
    from .storage import load_checkpoint, read_json

    path = Path(text)
    if path.is_file():
        d = read_json(path)
    elif re.fullmatch(r"[0-9a-f]{16}", text):
        model = Path(results) / "models" / f"{text}.pt"
        records = sorted(Path(results).glob(f"*/cells/{text}.json"))
        if model.is_file():
            d = load_checkpoint(model, "aotbench-model-v1")["config"]
        elif records:
            d = read_json(records[0])
        else:
            raise UserError(f"no model {model} and no record of cell {text} under {results}")
    else:
        raise UserError(f"--config {text!r} is neither a JSON file nor a train/cell key")
    if not isinstance(d, dict):
        raise UserError(f"--config {text}: expected a JSON object, got {type(d).__name__}")
    if "config" in d and isinstance(d["config"], dict):
        d = d["config"]
    if "train" in d and isinstance(d["train"], dict):
        d = d["train"]
    d = TrainConfig.upgrade(d)  # a config written before a field was renamed stays readable
    if "dataset" in d:  # what a grid would fill in: the dataset's own network and training defaults
        from .grid import dataset_train_defaults

        for field, value in dataset_train_defaults(registry, resolve(registry, "dataset", d["dataset"])).items():
            d.setdefault(field, value)
    for kind in TRAIN_CHOICES:
        if d.get(kind) is None:
            raise UserError(f"--config {text}: the training config has no {kind!r}")
        d[kind] = resolve(registry, kind, d[kind]).to_dict()
    from .grid import TRAIN_AXES, typed_value

    for name, (field, typ) in {**TRAIN_AXES, "seed": ("seed", int)}.items():
        if field in d:  # as a grid types them: 200.0 is 200, 10.7, true or "x" for an integer are refused
            d[field] = typed_value(name, typ, d[field])
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"--config {text}: unknown training field {', '.join(unknown)} "
                        f"(fields: {', '.join(sorted(known))})")
    try:
        cfg = TrainConfig.from_dict(d)
    except TypeError as err:
        raise UserError(f"--config {text}: {err}") from None
    from .datasets import bind_data

    return cfg if cfg.data_fingerprint else bind_data(registry, cfg)


def train_command(config: str, *, results: str = "results", device: str = "auto", ckpt_every: int = 500,
                  pair_workers: int | None = None, progress: bool = True, log=None) -> int:
    """Train one model into RESULTS/models/<train_key>.pt. Under torchrun (``--nproc_per_node R`` for a config with
    ``ranks=R``) every process is one DDP rank pairing its own pool; rank 0 writes the checkpoints."""
    from . import distributed
    from .plugins import get_registry
    from .records import Workspace
    from .train import TrainOptions, train_model

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if ckpt_every < 1:
        raise UserError("--ckpt-every must be >= 1")
    registry = get_registry()
    cfg = resolve_train_config(registry, config, Path(results))
    world = distributed.init(device)
    try:
        if world.world_size != cfg.ranks and world.distributed:
            raise UserError(f"launched with {world.world_size} processes but the config has ranks={cfg.ranks}")
        dev = world.device(device)
        path = Workspace(Path(results)).model_path(cfg.key)
        t0 = time.perf_counter()
        ckpt = train_model(registry, cfg, path, TrainOptions(
            device=dev, ckpt_every=ckpt_every, pair_workers=pair_workers, progress=progress and world.leader,
            handle_signals=True, world_rank=world.rank, world_size=world.world_size))
        if world.leader:
            how = f"DDP over {world.world_size} processes ({world.backend})" if world.distributed else \
                f"{cfg.ranks} rank(s) simulated in one process"
            log(f"model {cfg.key}: step {ckpt['step']}/{cfg.train_steps}, {how}, {time.perf_counter() - t0:.1f} s "
                f"-> {path}")
        return 0
    finally:
        distributed.shutdown(world)


