"""Records -> pandas tables: one row per cell, and the mean +- sd over seeds."""

from __future__ import annotations

import math

import pandas as pd

CHOICE_COLS = ["dataset", "network", "pairing", "sampler", "guidance"]
CONFIG_COLS = [*CHOICE_COLS, "conditional", "train_steps", "batch", "pool", "ranks", "steps", "rho", "label",
               "n_samples"]
METRIC_ORDER = ["nfe", "fd", "fid", "w2", "curvature", "trunc_err"]
TIMING_COLS = ["train_seconds", "pair_seconds", "pair_wait_seconds", "sample_seconds"]


def _choice_labels(dicts: list[dict], defaults=None) -> list[str]:
    """name plus the parameters whose value varies among records of that name, each shown only where it differs
    from the plugin's default (``defaults(name) -> {param: default}``, or None when unknown): "dg", "dg:w=0.5"."""
    varying: dict[str, set] = {}
    by_name: dict[str, list[dict]] = {}
    for d in dicts:
        by_name.setdefault(d["name"], []).append(d)
    for name, ds in by_name.items():
        keys = {k for d in ds for k in d if k != "name"}
        varying[name] = {k for k in keys if len({repr(d.get(k)) for d in ds}) > 1}
    base = {name: (defaults(name) if defaults else None) or {} for name in by_name}

    def shown(d, k):
        return k in d and not (k in base[d["name"]] and repr(base[d["name"]][k]) == repr(d[k]))

    return [":".join([d["name"], *(f"{k}={d[k]}" for k in sorted(varying[d["name"]]) if shown(d, k))])
            for d in dicts]


def records_frame(records: list[dict], registry=None) -> pd.DataFrame:
    """One row per record: config columns, seed, every numeric metric, timings.

    With ``registry``, plugin columns leave out parameters at their registered default (a plugin no longer
    installed shows every varying parameter)."""
    if not records:
        return pd.DataFrame()
    rows = []
    for r in records:
        c, t = r["config"], r["config"]["train"]
        row = {"train_steps": t["steps"], "batch": t["batch"], "pool": t["pool"], "ranks": t.get("ranks", 1),
               "conditional": t.get("conditional", False), "seed": t["seed"], "steps": c["steps"], "rho": c["rho"],
               "label": c.get("label"), "n_samples": c["n_samples"], "cell_key": r["cell_key"],
               "train_key": r["train_key"], "device": r.get("environment", {}).get("device")}
        for k, v in r.get("metrics", {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[k] = float(v)
            else:
                row[k] = v
        for k, v in r.get("timings", {}).items():
            row[k] = float(v)
        rows.append(row)
    df = pd.DataFrame(rows)
    sources = {"dataset": lambda r: r["config"]["train"]["dataset"], "network": lambda r: r["config"]["train"]["network"],
               "pairing": lambda r: r["config"]["train"]["pairing"], "sampler": lambda r: r["config"]["sampler"],
               "guidance": lambda r: r["config"]["guidance"]}
    for col, get in sources.items():
        df[col] = _choice_labels([get(r) for r in records], _defaults_of(registry, col) if registry else None)
    return df


def _defaults_of(registry, kind: str):
    from .errors import UserError

    def defaults(name: str) -> dict | None:
        try:
            return registry.get(kind, name).params
        except UserError:
            return None

    return defaults


def metric_columns(df: pd.DataFrame) -> list[str]:
    numeric = [c for c in df.columns if c not in CONFIG_COLS and c not in ("seed",) and c not in TIMING_COLS
               and pd.api.types.is_numeric_dtype(df[c]) and not c.endswith("_seconds")]
    return [m for m in METRIC_ORDER if m in numeric] + sorted(m for m in numeric if m not in METRIC_ORDER)


def summarize(df: pd.DataFrame, metrics: list[str] | None = None, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, sd (ddof=1; 0 for one seed) and seed count per group of config columns; columns ``m``, ``m_sd``."""
    metrics = metrics if metrics is not None else metric_columns(df)
    by = [c for c in (by or CONFIG_COLS) if c in df.columns]
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
    cfg = [c for c in CONFIG_COLS if c in s.columns and (c in keep or s[c].astype(str).nunique() > 1)]
    out = s[cfg].copy()
    for m in metrics:
        out[m] = [_fmt(a, b, n) for a, b, n in zip(s[m], s[f"{m}_sd"], s["seeds"])]
    if s["seeds"].max() > 1:
        out["seeds"] = s["seeds"]
    return out
