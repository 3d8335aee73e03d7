"""Records -> pandas tables: one row per cell, and the mean +- sd over seeds.

A table row is every config field plus every descriptor of the values (extractor, mode, sample count): records
that differ in anything but their seed are never pooled, and the columns come from the config dataclasses, so a new
field can not be forgotten here.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from .axes import axes

CHOICE_COLS = list(axes("choice"))

METRIC_ORDER = ["nfe", "fd", "fid", "w2", "curvature", "trunc_err"]
#: numeric metric outputs that describe a value rather than measure it (sample counts, dimensions): they label
#: groups like config columns and are never averaged
DESCRIPTOR_SUFFIXES = ("_n", "_dim", "_runs")
#: numeric metric outputs that describe a value's instrument rather than the cell, each with the descriptor that
#: names the instrument: the FD feature net's held-out accuracy is one number per extractor (whose name carries its
#: content hash), so a record written before the accuracy was recorded takes it from another record of that
#: extractor instead of splitting a row of seeds in two
DESCRIPTOR_NAMES = {"fd_extractor_accuracy": "fd_extractor"}
#: metric outputs that belong to the model, not the cell (the ``coupling`` metric): one value per trained model
MODEL_LEVEL = ("pair_cost_ratio", "noise_ks_p", "noise_mean_z", "noise_cov_max", "noise_n", "noise_ks_n")
#: config fields that are seeds: the only thing ``summarize`` pools over
SEED_COLS = ["seed", "sample_seed"]


def _config_fields() -> tuple[list[tuple[str, str, object]], list[tuple[str, str, object]]]:
    """(column, field, default) of every TrainConfig and CellConfig field, read from the dataclasses themselves so a
    new field reaches every table."""
    from .config import CellConfig, TrainConfig

    def default(f):
        return f.default if f.default is not dataclasses.MISSING else None

    train = [(f.name, f.name, default(f)) for f in dataclasses.fields(TrainConfig)]
    cell = [(f.name, f.name, default(f)) for f in dataclasses.fields(CellConfig) if f.name not in ("train", "metrics")]
    return train, cell


def model_columns() -> list[str]:
    """Config columns that identify a model (seeds excluded)."""
    return [c for c, _, _ in _config_fields()[0] if c not in SEED_COLS]


def config_columns() -> list[str]:
    """Config columns that identify a cell (seeds excluded): the model's, then the sampling config's."""
    train, cell = _config_fields()
    return [c for c, _, _ in train + cell if c not in SEED_COLS]


def is_descriptor(df: pd.DataFrame, col: str) -> bool:
    """A metric output that labels a value (an extractor name, a mode, a sample count) instead of measuring it."""
    numeric = pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])
    if col in MODEL_LEVEL:  # the coupling counts (noise_n) grow with training: measured, not a label
        return False
    return not numeric or col.endswith(DESCRIPTOR_SUFFIXES) or col in DESCRIPTOR_NAMES


def _choice_labels(dicts: list[dict], defaults=None) -> list[str]:
    """name plus every parameter set away from the plugin's default (``defaults(name) -> {param: default}``), so a
    sweep of one variant still says which ("knn:k=4"); for a plugin whose defaults are unknown (``defaults`` None, or
    the plugin no longer installed), the parameters whose value varies among records of that name: "dg:w=0.5"."""
    by_name: dict[str, list[dict]] = {}
    for d in dicts:
        by_name.setdefault(d["name"], []).append(d)
    base = {name: defaults(name) if defaults else None for name in by_name}

    def differs(d, k):
        known = base[d["name"]] or {}
        return k in d and not (k in known and repr(known[k]) == repr(d[k]))

    shown = {}
    for name, ds in by_name.items():
        keys = {k for d in ds for k in d if k != "name"}
        if base[name] is None:
            shown[name] = {k for k in keys if len({repr(d.get(k)) for d in ds}) > 1}
        else:
            shown[name] = {k for k in keys if any(differs(d, k) for d in ds)}
    return [":".join([d["name"], *(f"{k}={d[k]}" for k in sorted(shown[d["name"]]) if differs(d, k))])
            for d in dicts]


def records_frame(records: list[dict], registry=None) -> pd.DataFrame:
    """One row per record: every config field as a column (plugin choices as labels), every metric output, timings.

    Config columns come from the config dataclasses; a field an older record lacks takes its default. With
    ``registry``, plugin columns leave out parameters at their registered default (a plugin no longer installed
    shows every varying parameter)."""
    if not records:
        return pd.DataFrame()
    from .config import ADDED, TRAIN_CHOICES, TrainConfig

    train_fields, cell_fields = _config_fields()
    rows = []
    for r in records:
        c, t = r["config"], TrainConfig.upgrade(r["config"]["train"])
        row = {col: t.get(name, default) for col, name, default in train_fields}
        row.update({col: c.get(name, default) for col, name, default in cell_fields})
        row.update({"cell_key": r["cell_key"], "train_key": r["train_key"],
                    "device": r.get("environment", {}).get("device"),
                    "train_img": row["train_steps"] * row["batch"]})
        for k, v in r.get("metrics", {}).items():
            row[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for k, v in r.get("timings", {}).items():
            row[k] = float(v)
        rows.append(row)
    df = pd.DataFrame(rows)
    for col, instrument in DESCRIPTOR_NAMES.items():
        if col in df and instrument in df:
            df[col] = df.groupby(instrument, dropna=False)[col].transform(lambda v: v.ffill().bfill())
    for col in CHOICE_COLS:
        if col in TRAIN_CHOICES:
            dicts = [TrainConfig.upgrade(r["config"]["train"]).get(col) for r in records]
        else:
            dicts = [r["config"].get(col, ADDED.get(col)) for r in records]
        df[col] = _choice_labels(dicts, _defaults_of(registry, col) if registry else None)
    return df


def _defaults_of(registry, kind: str):
    from .errors import UserError

    def defaults(name: str) -> dict | None:
        try:
            return registry.get(kind, name).params
        except UserError:
            return None

    return defaults


_BOOKKEEPING = {"cell_key", "train_key", "device", "experiment", "train_img"}


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Every numeric metric output, a third party's included (not config, seeds, timings or descriptors)."""
    skip = {*config_columns(), *SEED_COLS, *_BOOKKEEPING}
    numeric = [c for c in df.columns if c not in skip and not c.endswith("_seconds") and not is_descriptor(df, c)]
    return [m for m in METRIC_ORDER if m in numeric] + sorted(m for m in numeric if m not in METRIC_ORDER)


def descriptor_columns(df: pd.DataFrame) -> list[str]:
    """Metric outputs that label values (extractor, mode, sample count, reference): grouped by, never averaged, so
    values of different extractors, modes or sample counts never share a row."""
    skip = {*config_columns(), *SEED_COLS, *_BOOKKEEPING}
    return [c for c in df.columns if c not in skip and not c.endswith("_seconds") and is_descriptor(df, c)]


def group_columns(df: pd.DataFrame) -> list[str]:
    """What a row of a table is: every config column and descriptor; only seeds are pooled."""
    return [c for c in [*config_columns(), *descriptor_columns(df)] if c in df.columns]


def summarize(df: pd.DataFrame, metrics: list[str] | None = None, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, sd (ddof=1; 0 for one seed) and seed count per group; columns ``m``, ``m_sd``, ``seeds``.

    ``by`` defaults to :func:`group_columns`: records that differ in anything but their seed are never pooled."""
    metrics = metrics if metrics is not None else metric_columns(df)
    by = [c for c in (by if by is not None else group_columns(df)) if c in df.columns]
    g = df.groupby(by, dropna=False, sort=False)
    mean = g[metrics].mean()
    sd = g[metrics].std(ddof=1).fillna(0.0).add_suffix("_sd")
    out = pd.concat([mean, sd, g.size().rename("seeds")], axis=1).reset_index()
    return out


def _fmt(mean: float, sd: float, seeds: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    digits = 3 if abs(mean) >= 1 or mean == 0 else max(3, 2 - int(math.floor(math.log10(abs(mean)))) + 1)
    text = f"{mean:.{digits}g}" if abs(mean) < 1e4 else f"{mean:.0f}"
    return text if seeds <= 1 else f"{text} ± {sd:.2g}"


def display_table(df: pd.DataFrame, metrics: list[str] | None = None, keep: tuple[str, ...] = ("pairing", "sampler",
                  "steps")) -> pd.DataFrame:
    """Human table: config columns that vary (plus ``keep``), metrics as 'mean ± sd' over seeds."""
    metrics = metrics if metrics is not None else metric_columns(df)
    s = summarize(df, metrics)
    cfg = [c for c in group_columns(df) if c in s.columns and (c in keep or s[c].astype(str).nunique() > 1)]
    out = s[cfg].copy()
    for m in metrics:
        out[m] = [_fmt(a, b, n) for a, b, n in zip(s[m], s[f"{m}_sd"], s["seeds"])]
    if s["seeds"].max() > 1:
        out["seeds"] = s["seeds"]
    return out
