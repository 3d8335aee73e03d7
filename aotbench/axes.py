"""The one table of grid axes: every option of ``run``, every key of a sweep's ``[grid]``, every config field a grid
can vary, with its type, unit and help.

The ``run`` flags (:mod:`aotbench.cli`), the grid's typing (:mod:`aotbench.grid`), the TOML validation
(:mod:`aotbench.sweep.spec`) and the tables' plugin columns (:mod:`aotbench.tables`) are all generated from
:data:`AXES_TABLE`; ``tests/test_axes.py`` proves every axis reaches each of them. Value bounds are checked by the
configs themselves (``TrainConfig`` / ``CellConfig.__post_init__``), in one place for every way of making one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Axis:
    """One axis: ``name`` is the grid/TOML key and the ``run`` flag (``--train-steps`` for ``train_steps``)."""

    name: str
    level: str          # "choice" (a plugin of kind ``name``), "train" (a TrainConfig field), "cell" (a CellConfig
                        # field) or "grid" (read by the expansion itself: seeds, metrics, train_mimg)
    type: type
    help: str           # what it is, with its unit

    @property
    def flag(self) -> str:
        """The ``run`` option: ``--train-steps`` for ``train_steps``."""
        return "--" + self.name.replace("_", "-")


AXES_TABLE: tuple[Axis, ...] = (
    # plugins
    Axis("dataset", "choice", str, "dataset plugin(s); default: the default dataset (digits)"),
    Axis("network", "choice", str, "network plugin(s); default: the dataset's own"),
    Axis("pairing", "choice", str, "pairing plugin(s), e.g. none,aot,sinkhorn:reg=0.1"),
    Axis("sampler", "choice", str, "sampler plugin(s), e.g. euler,heun"),
    Axis("guidance", "choice", str, "guidance plugin(s)"),
    Axis("schedule", "choice", str, "schedule plugin(s): karras (EDM's rho-schedule, default), logsnr, "
                                    "time-uniform, flow-uniform"),
    Axis("objective", "choice", str, "training objective plugin(s): edm (default), rectified-flow (flow "
                                     "matching, e.g. rectified-flow:t_dist=logit-normal); part of the model"),
    # sampling
    Axis("steps", "cell", int, "sampling steps (Heun: NFE = 2*steps - 1)"),
    Axis("rho", "cell", float, "schedule rho (EDM 7; the paper's low-NFE settings 72, 90)"),
    Axis("sigma_min", "cell", float, "smallest nonzero sigma of the schedule (EDM: 0.002)"),
    Axis("sigma_max", "cell", float, "largest sigma of the schedule (EDM: 80)"),
    Axis("n_samples", "cell", int, "samples per cell"),
    Axis("label", "cell", int, "conditional models: sample only this class (a label value as the data has it)"),
    Axis("label_sampling", "cell", str, "conditional models without --label: draw classes in the train split's "
                                        "proportions (train, default) or uniformly (uniform)"),
    # training
    Axis("train_steps", "train", int, "training duration, optimizer steps"),
    Axis("train_mimg", "grid", float, "training duration in millions of images, EDM's unit (instead of "
                                      "--train-steps)"),
    Axis("snapshots", "grid", int, "evaluate N evenly spaced snapshots of each training run, the last one included "
                                   "(cells at train_steps T i / N; each run is trained once)"),
    Axis("batch", "train", int, "global batch, samples per optimizer step over all ranks"),
    Axis("pool", "train", int, "AOT pool per rank, samples (a multiple of the per-rank batch)"),
    Axis("ranks", "train", int, "data-parallel ranks, each pairing its own pool (simulated in one process)"),
    Axis("global_pool", "train", bool, "pair one assignment over every rank's pool together (ranks x pool "
                                       "samples) instead of each rank's own (true/false)"),
    Axis("lr", "train", float, "learning rate (Adam)"),
    Axis("lr_rampup_img", "train", int, "learning-rate ramp-up, images"),
    Axis("ema_halflife_img", "train", float, "EMA half-life, images"),
    Axis("ema_rampup_ratio", "train", float, "EMA ramp-up: the half-life is at most this fraction of the images "
                                             "seen (EDM's ema_rampup_ratio)"),
    Axis("conditional", "train", bool, "train class-conditional models (true/false)"),
    Axis("label_dropout", "train", float, "label dropout probability (needed by cfg)"),
    Axis("augment_p", "train", float, "EDM augmentation probability"),
    Axis("grad_accum", "train", int, "gradient accumulation rounds per optimizer step"),
    Axis("precision", "train", str, "fp32, bf16 or fp16"),
    # what the expansion itself reads
    Axis("seeds", "grid", int, "seeds; each seeds both training and sampling"),
    Axis("metrics", "grid", str, "metrics to compute; default: every default metric"),
)

#: axis name -> Axis
AXES_BY_NAME = {a.name: a for a in AXES_TABLE}


def axes(level: str) -> dict[str, Axis]:
    """The axes of one level, in table order."""
    return {a.name: a for a in AXES_TABLE if a.level == level}
