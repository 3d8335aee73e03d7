"""``report``: a folder of records -> tables (markdown, CSV, LaTeX) and figures (PNG).

Tables give the mean +- sd over seeds:

- ``models``: per dataset x pairing (x every other training setting that varies): curvature of the
  probability-flow ODE, the coupling diagnostics (``pair_cost_ratio``, ``noise_ks_p``, ``noise_mean_z``,
  ``noise_cov_max``: the ``coupling`` metric), training seconds and the share of them spent pairing;
- ``cells``: per dataset x pairing x sampler x rho x guidance x NFE: FD (FID where computed), W2, truncation error.

Figures: FD vs NFE (one line per pairing, seed bands), curvature and pair cost ratio per model configuration,
truncation error vs NFE, 2-D ODE
trajectories of two pairings side by side, the "tangent strip" (the denoiser output D(x_sigma; sigma) at about 10
sigmas along one trajectory, the AOT paper's teaser figure), and a sample grid per pairing. Figures that need
arrays the records do not have (trajectories, samples) are skipped with a note.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .plugins import get_registry
from .records import read_records
from .storage import atomic_write_bytes, atomic_write_text
from .tables import group_columns, metric_columns, model_columns, records_frame, summarize

#: read from a model's unguided cells into the model table, not the cell table
MODEL_METRICS = ["curvature", "pair_cost_ratio", "noise_ks_p", "noise_mean_z", "noise_cov_max", "noise_n",
                 "noise_ks_n"]
#: the model metrics the model table shows (the sample counts stay in models.csv)
MODEL_SHOWN = ["curvature", "pair_cost_ratio", "noise_ks_p", "noise_mean_z", "noise_cov_max"]


def _pm(mean, sd, n, digits=4) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "–"
    text = f"{mean:.{digits}g}"
    return text if n <= 1 or sd == 0 else f"{text} ± {sd:.2g}"


def pairing_order(df: pd.DataFrame) -> dict[str, int]:
    """Pairings in order of their pairing cost (cheapest, i.e. the independent baseline, first), then name."""
    cost = df.groupby("pairing")["pair_seconds"].mean() if "pair_seconds" in df else pd.Series(dtype=float)
    names = sorted(df["pairing"].unique(), key=lambda p: (cost.get(p, 0.0), p))
    return {p: i for i, p in enumerate(names)}


def model_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model configuration (seeds pooled): curvature, coupling diagnostics, and training time with its pairing
    share.

    Curvature belongs to the ODE that was solved, and guidance changes it, so a model's curvature is read from its
    unguided cells (from a guided one only where it has none)."""
    guided = df["guidance"] != "none" if "guidance" in df else pd.Series(False, index=df.index)
    per_model = df.assign(_g=guided).sort_values("_g", kind="stable").drop_duplicates("train_key")
    per_model = per_model.drop(columns="_g").copy()
    per_model["pair_share"] = per_model["pair_seconds"] / per_model["train_seconds"]
    metrics = [m for m in (*MODEL_METRICS, "train_seconds", "pair_seconds", "pair_share")
               if m in per_model and per_model[m].notna().any()]
    out = summarize(per_model, metrics, by=model_by(per_model))
    out["_p"] = out["pairing"].map(pairing_order(df))
    keys = [c for c in ("dataset", "conditional", "_p", "train_steps") if c in out]  # snapshots in training order
    return out.sort_values(keys, kind="stable").drop(columns="_p").reset_index(drop=True)


def model_by(df: pd.DataFrame) -> list[str]:
    """What a row of the model table is: every training config column (seeds pooled)."""
    return [c for c in model_columns() if c in df.columns]


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell configuration (seeds pooled), ordered so that pairings sit next to each other at equal NFE.

    Every numeric metric is a column (a third party's included); a row is every config column and descriptor."""
    metrics = [m for m in metric_columns(df) if m not in MODEL_METRICS and df[m].notna().any()]
    out = summarize(df, metrics, by=group_columns(df))
    out["_p"] = out["pairing"].map(pairing_order(df))
    if "guidance" in out:  # unguided rows first, then each guidance by name
        out["_g"] = out["guidance"].map(lambda g: (g != "none", g))
    keys = [c for c in ("dataset", "conditional", "_g", "sampler", "rho", "steps", "_p", "train_steps") if c in out]
    return out.sort_values(keys, kind="stable").drop(columns=["_p", "_g"], errors="ignore").reset_index(drop=True)


def _display(summary: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    metrics = [c for c in summary.columns if c not in by and not c.endswith("_sd") and c != "seeds"]
    out = summary[[c for c in by if c in summary]].copy()
    for m in metrics:
        out[m] = [_pm(a, b, n) for a, b, n in zip(summary[m], summary[f"{m}_sd"], summary["seeds"])]
    out["seeds"] = summary["seeds"]
    return out


def _varying(df: pd.DataFrame, cols: list[str]) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].astype(str).nunique() > 1]


def _drop_constant(df: pd.DataFrame, keep=("pairing",)) -> pd.DataFrame:
    return df[[c for c in df.columns if c in keep or df[c].astype(str).nunique() > 1 or c == "seeds"]]


def write_tables(df: pd.DataFrame, out: Path) -> dict[str, pd.DataFrame]:
    """Write the tables of the records frame ``df`` into ``out``: table.md (per dataset, mean ± sd over seeds, constant
    columns dropped), table.csv (cells), models.csv and table.tex. Returns {"models", "cells"}."""
    models, cells = model_table(df), cell_table(df)
    md = ["# Results", "", f"{df['train_key'].nunique()} model(s), {len(df)} cell record(s); mean ± sd over seeds.",
          ""]
    mby, cby = model_by(models), group_columns(df)
    for ds in cells["dataset"].unique():
        shown = models[models.dataset == ds].drop(columns=[f"{m}{sd}" for m in MODEL_METRICS if m not in MODEL_SHOWN
                                                           for sd in ("", "_sd")], errors="ignore")
        md += [f"## {ds}", "", "### Models: ODE curvature (unguided), coupling diagnostics and training cost", "",
               _drop_constant(_display(shown, mby)).to_markdown(index=False), "",
               "### Cells: quality vs NFE", "",
               _drop_constant(_display(cells[cells.dataset == ds], cby),
                              keep=("pairing", "sampler", "nfe")).to_markdown(index=False), ""]
    extractors = sorted({str(x) for x in df.get("fd_extractor", pd.Series(dtype=str)).dropna()})
    if extractors:
        md += [f"FD feature extractors: {', '.join(extractors)} (FD values from different extractors are not "
               "comparable).", ""]
    atomic_write_text(out / "table.md", "\n".join(md))
    atomic_write_text(out / "table.csv", cells.to_csv(index=False))
    atomic_write_text(out / "models.csv", models.to_csv(index=False))
    tex = _drop_constant(_display(cells, cby), keep=("dataset", "pairing", "sampler", "nfe")).to_latex(
        index=False, escape=True)
    atomic_write_text(out / "table.tex", tex)
    return {"models": models, "cells": cells}


# -- figures ----------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _nfe_ticks(ax, values) -> None:
    """Label the log-scaled NFE axis at the NFE values themselves, not at powers of ten."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _series(d: pd.DataFrame) -> pd.Series:
    """A model setting's label: the pairing plus every other model setting that varies within its dataset in ``d``
    (the objective, a pool ablation's pool), so that two models of one pairing never share a line, bar or figure."""
    label = d["pairing"].astype(str)
    for _, g in d.groupby("dataset", sort=False):
        for c in _varying(g, [c for c in model_columns() if c not in ("dataset", "pairing", "conditional")]):
            label.loc[g.index] = label.loc[g.index] + f" {c}=" + g[c].astype(str)
    return label


def _panel_title(key: dict) -> str:
    sampler, rho, guidance, cond = (key.pop(k, None) for k in ("sampler", "rho", "guidance", "conditional"))
    parts = [f"{sampler}, rho={rho:g}"] + ([] if guidance in (None, "none") else [str(guidance)])
    parts += [f"{k}={v}" for k, v in key.items()] + (["cond."] if cond else [])
    return ", ".join(parts)


def _panel_grid(plt, n: int):
    """A figure of ``n`` panels, at most four to a row (axes as a 2-D array); a lone panel is drawn large."""
    cols = min(4, n)
    rows = -(-n // cols)
    return plt.subplots(rows, cols, figsize=(max(4.2 * cols, 8.0), 3.2 * rows if cols > 1 else 4.8), squeeze=False)


def _legend_below(fig, plt, colours: dict, shown: list[str]) -> None:
    """One legend for the whole figure, under its panels, at most four entries to a row: it never covers a title or
    a line, however many lines and panels there are."""
    handles = [plt.Line2D([], [], color=colours[p], marker="o", ms=3) for p in shown]
    fig.legend(handles, shown, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=min(4, len(shown)), fontsize=8,
               frameon=False)


def _band_lines(ax, p: pd.DataFrame, x: str, metric: str, colours: dict) -> None:
    """One line per ``_series`` of ``p`` against column ``x``: the mean over seeds, with a band of one sd."""
    for series, g in p.groupby("_series", sort=False):
        g = g.sort_values(x)
        ax.plot(g[x], g[metric], marker="o", ms=3, label=series, color=colours[series])
        ax.fill_between(g[x], g[metric] - g[f"{metric}_sd"], g[metric] + g[f"{metric}_sd"], alpha=0.2,
                        color=colours[series])


def _lines_vs_nfe(cells: pd.DataFrame, metric: str, out: Path, name: str, ylabel: str) -> list[Path]:
    """One panel per sampling setting (sampler, rho, guidance, and whatever else varies but the step count), at
    most four to a row; one line per model setting (pairing, and a pool or budget where those vary)."""
    plt = _plt()
    written = []
    sub = cells[cells[metric].notna()] if metric in cells else cells.iloc[0:0]
    sub = sub.assign(_series=_series(sub)) if len(sub) else sub
    names = list(dict.fromkeys(sub["_series"])) if len(sub) else []
    palette = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colours = {p: palette(i % palette.N) for i, p in enumerate(names)}
    for ds in sub["dataset"].unique() if len(sub) else []:
        d = sub[sub.dataset == ds]
        sampling = [c for c in group_columns(d) if c not in model_columns() and c not in ("steps", "_series")]
        panel_cols = ["sampler", "rho", "guidance", "conditional"] + [
            c for c in _varying(d, sampling) if c not in ("sampler", "rho", "guidance")]
        panel_cols = [c for c in dict.fromkeys(panel_cols) if c in d.columns]
        panels = d[panel_cols].drop_duplicates().to_dict("records")
        fig, axes = _panel_grid(plt, len(panels))
        for ax, key in zip(axes.flat, panels):
            p = _select(d, key)
            _band_lines(ax, p, "nfe", metric, colours)
            ax.set_xscale("log")
            ax.set_yscale("log")
            _nfe_ticks(ax, sorted(p["nfe"].unique()))
            ax.set_title(_panel_title(dict(key)), fontsize=9)
            ax.set_xlabel("NFE")
            ax.grid(alpha=0.3, which="both")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel(ylabel)
        _legend_below(fig, plt, colours, [p for p in colours if p in set(d["_series"])])
        fig.suptitle(f"{ds}: {ylabel} vs NFE (mean ± sd over seeds)", fontsize=10, x=0.02, ha="left")
        path = out / f"{name}_{ds}.png"
        _save(fig, path)
        written.append(path)
    return written


def _model_labels(m: pd.DataFrame) -> list[str]:
    """Bar labels for the model configurations of one dataset: the pairing plus every training setting that
    varies between them (pool, ranks, global pools, ...)."""
    varying = [c for c in model_by(m) if c not in ("dataset", "pairing") and m[c].astype(str).nunique() > 1]
    return ["\n".join([str(r.pairing) + (" (cond.)" if r.get("conditional") is True else ""),
                       *(f"{c}={r[c]}" for c in varying)]) for _, r in m.iterrows()]


def _model_bars(models: pd.DataFrame, out: Path, metric: str, ylabel: str, name: str) -> list[Path]:
    """One bar per model configuration (mean over seeds, sd as error bar), one panel per dataset."""
    if metric not in models or models[metric].isna().all():
        return []
    plt = _plt()
    sets = list(models["dataset"].unique())
    widths = [max(4.0, 0.55 * (models.dataset == ds).sum()) for ds in sets]
    fig, axes = plt.subplots(1, len(sets), figsize=(sum(widths), 3.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, ds in zip(axes[0], sets):
        m = models[models.dataset == ds]
        ax.bar(range(len(m)), m[metric], yerr=m[f"{metric}_sd"], capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(m)), _model_labels(m), rotation=60, ha="right", fontsize=7)
        ax.set_title(ds, fontsize=10)
        ax.set_ylabel(ylabel)
    path = out / name
    _save(fig, path)
    return [path]


def _artifact(folder: Path, rec: dict) -> dict | None:
    path = folder / "artifacts" / f"{rec['cell_key']}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:  # arrays only: nothing read from results runs code
        return {k: z[k] for k in z.files}


def _pick(df: pd.DataFrame, records: dict, folder: Path, dataset: str, series: str, key: str):
    """The artifact `key` of the seed-0, unguided, highest-NFE cell of one model setting (a :func:`_series` label,
    column ``_series`` of ``df``) (or None)."""
    d = df[(df.dataset == dataset) & (df["_series"] == series) & (df.seed == df.seed.min())]
    if "guidance" in d:
        d = d[d.guidance == "none"]
    for _, row in d.sort_values("nfe", ascending=False).iterrows():
        art = _artifact(folder, records[row.cell_key])
        if art is not None and key in art:
            return art
    return None


def _two_series(df: pd.DataFrame, dataset: str) -> list[str]:
    """Which model settings to show side by side: those of the registered default pairings if present (none vs
    aot), else the first two."""
    from .plugins import get_registry

    d = df[df.dataset == dataset]
    present = list(dict.fromkeys(d["_series"]))
    try:
        defaults = get_registry().defaults("pairing")
    except UserError:
        defaults = []
    preferred = [s for s in present if d.pairing[d["_series"] == s].iloc[0] in defaults]
    return (preferred + [s for s in present if s not in preferred])[:2]


def _side_by_side(df, records, folder, dataset: str, key: str, ndim: int) -> list[tuple[str, dict]]:
    """(model setting, artifacts) of the two to compare, where artifact ``key`` exists with ``ndim`` axes."""
    arts = [(p, _pick(df, records, folder, dataset, p, key)) for p in _two_series(df, dataset)]
    return [(p, a) for p, a in arts if a is not None and a[key].ndim == ndim]


def _trajectories(df, records, folder, out) -> list[Path]:
    plt = _plt()
    written = []
    for ds in df.dataset.unique():
        arts = _side_by_side(df, records, folder, ds, "trajectory_x", 3)
        if not arts or arts[0][1]["trajectory_x"].shape[-1] != 2:
            continue
        fig, axes = plt.subplots(1, len(arts), figsize=(4.2 * len(arts), 4.2), squeeze=False)
        for ax, (p, a) in zip(axes[0], arts):
            xs, sig = a["trajectory_x"], a["trajectory_sigmas"]
            keep = sig <= 3.0  # the last part of the path, where data and noise scales meet
            for k in range(xs.shape[1]):
                ax.plot(xs[keep[: len(xs)], k, 0], xs[keep[: len(xs)], k, 1], lw=1)
                ax.scatter(xs[-1, k, 0], xs[-1, k, 1], s=10, color="black", zorder=3)
            ax.set_title(f"{p}: PF-ODE paths, sigma <= 3", fontsize=10)
            ax.set_aspect("equal")
        fig.suptitle(f"{ds}: reference trajectories (Heun, 64 steps)", fontsize=10)
        path = out / f"trajectories_{ds}.png"
        _save(fig, path)
        written.append(path)
    return written


def _to_image(x: np.ndarray) -> np.ndarray:
    img = np.clip((x + 1) / 2, 0, 1)
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def _tangent_strips(df, records, folder, out) -> list[Path]:
    plt = _plt()
    written = []
    for ds in df.dataset.unique():
        arts = _side_by_side(df, records, folder, ds, "trajectory_denoised", 5)
        if not arts:
            continue
        sig = arts[0][1]["trajectory_sigmas"]
        idx = np.unique(np.linspace(0, len(sig) - 2, 10).round().astype(int))
        fig, axes = plt.subplots(len(arts), len(idx), figsize=(1.3 * len(idx), 1.5 * len(arts)), squeeze=False)
        for r, (p, a) in enumerate(arts):
            den = a["trajectory_denoised"]
            for c, i in enumerate(idx):
                ax = axes[r][c]
                ax.imshow(_to_image(den[i, 0]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"σ={sig[i]:.3g}", fontsize=7)
            axes[r][0].set_ylabel(p, fontsize=9)
        fig.suptitle(f"{ds}: denoiser output D(x_σ; σ) along one trajectory (same noise)", fontsize=9)
        path = out / f"tangent_strip_{ds}.png"
        _save(fig, path)
        written.append(path)
    return written


def _sample_grids(df, records, folder, out) -> list[Path]:
    plt = _plt()
    written = []
    for ds in df.dataset.unique():
        for p in df[df.dataset == ds]["_series"].unique():
            a = _pick(df, records, folder, ds, p, "samples")
            if a is None:
                continue
            s = a["samples"]
            fig = plt.figure(figsize=(4, 4))
            if s.ndim == 2 and s.shape[1] == 2:
                ax = fig.add_subplot(111)
                ax.scatter(s[:, 0], s[:, 1], s=4)
                ax.set_aspect("equal")
            elif s.ndim == 4:
                n = int(np.floor(np.sqrt(len(s))))
                tiles = [_to_image(x) for x in s[: n * n]]
                rows = [np.concatenate(tiles[i * n:(i + 1) * n], axis=1) for i in range(n)]
                ax = fig.add_subplot(111)
                ax.imshow(np.concatenate(rows, axis=0), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                plt.close(fig)
                continue
            fig.suptitle(f"{ds}: samples, pairing {p}", fontsize=9)
            path = out / f"samples_{ds}_{p.replace(':', '_').replace('=', '-').replace(' ', '_')}.png"
            _save(fig, path)
            written.append(path)
    return written


def _efficiency_frame(cells: pd.DataFrame, metric: str, nfes: list[float] | None,
                      missing: dict | None = None) -> pd.DataFrame:
    """The cell table's rows of datasets whose models vary in training length, at the chosen NFE values (default:
    the smallest and the largest there are), with ``train_img`` and a line label without the training length.
    ``missing`` (when given) receives, per such dataset, the chosen NFE values it lacks and the ones it has."""
    if metric not in cells or "train_steps" not in cells:
        return cells.iloc[0:0]
    parts = []
    for ds in cells["dataset"].unique():
        d = cells[(cells.dataset == ds) & cells[metric].notna()]
        if d["train_steps"].nunique() < 2:
            continue
        wanted = nfes or sorted({d["nfe"].min(), d["nfe"].max()})
        have = sorted({round(float(x), 6) for x in d["nfe"]})
        if missing is not None and any(round(float(x), 6) not in have for x in wanted):
            missing[ds] = ([x for x in wanted if round(float(x), 6) not in have], have)
        d = d[d["nfe"].round(6).isin([round(float(x), 6) for x in wanted])]
        parts.append(d)
    if not parts:
        return cells.iloc[0:0]
    d = pd.concat(parts)
    d = d.assign(train_img=d["train_steps"] * d["batch"])
    extra = _varying(d, [c for c in model_columns() if c not in ("dataset", "pairing", "conditional", "train_steps")])
    label = d["pairing"].astype(str)
    for c in extra:
        label = label + f" {c}=" + d[c].astype(str)
    return d.assign(_series=label)


def _panels(d: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """The sampling settings that make one panel of a training-efficiency figure (NFE included)."""
    sampling = [c for c in group_columns(d) if c not in model_columns() and c not in ("steps", "_series", "train_img")]
    cols = ["sampler", "rho", "guidance", "conditional", "nfe"] + [
        c for c in _varying(d, sampling) if c not in ("sampler", "rho", "guidance", "nfe")]
    cols = [c for c in dict.fromkeys(cols) if c in d.columns]
    return cols, d[cols].drop_duplicates().to_dict("records")


def _select(d: pd.DataFrame, key: dict) -> pd.DataFrame:
    return d[np.logical_and.reduce([(d[c].astype(str) == str(v)).values for c, v in key.items()])]


def _lines_vs_train_img(eff: pd.DataFrame, metric: str, out: Path, ylabel: str) -> list[Path]:
    """FD against training images seen, one line per pairing (seed bands), one panel per sampling setting and NFE:
    the training-efficiency curves of snapshots (``--snapshots``) or of a ``train_steps`` axis."""
    if not len(eff):
        return []
    plt = _plt()
    written = []
    names = list(dict.fromkeys(eff["_series"]))
    palette = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colours = {p: palette(i % palette.N) for i, p in enumerate(names)}
    for ds in eff["dataset"].unique():
        d = eff[eff.dataset == ds]
        _, panels = _panels(d)
        fig, axes = _panel_grid(plt, len(panels))
        for ax, key in zip(axes.flat, panels):
            _band_lines(ax, _select(d, key), "train_img", metric, colours)
            ax.set_yscale("log")
            title = dict(key)
            nfe = title.pop("nfe")
            ax.set_title(f"{_panel_title(title)}, NFE {nfe:g}", fontsize=9)
            ax.set_xlabel("training images")
            ax.grid(alpha=0.3, which="both")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel(ylabel)
        _legend_below(fig, plt, colours, [p for p in colours if p in set(d["_series"])])
        path = out / f"{metric}_vs_train_img_{ds}.png"
        _save(fig, path)
        written.append(path)
    return written


def images_to_reach(eff: pd.DataFrame, metric: str, target: float | None, order: dict[str, int]) -> pd.DataFrame:
    """Per dataset, sampling setting, NFE and line: the fewest training images whose mean ``metric`` over seeds is
    at most the target, or "not reached". The target is ``target``, else the final value (most images) of the
    first line in ``order`` (the cheapest pairing, normally the independent baseline) in that panel: "how many
    images does each coupling need to match the baseline's end result". No interpolation between snapshots."""
    rows = []
    for ds in eff["dataset"].unique():
        d = eff[eff.dataset == ds]
        cols, panels = _panels(d)
        for key in panels:
            p = _select(d, key)
            lines = sorted(p["_series"].unique(), key=lambda s: (order.get(s.split(" ")[0], 99), s))
            base = p[p["_series"] == lines[0]].sort_values("train_img")
            x = target if target is not None else float(base[metric].iloc[-1])
            for series in lines:
                g = p[p["_series"] == series].sort_values("train_img")
                hit = g[g[metric] <= x]
                rows.append({"dataset": ds, **key, "line": series, f"{metric}_target": x,
                             "images": int(hit["train_img"].iloc[0]) if len(hit) else None,
                             f"final_{metric}": float(g[metric].iloc[-1]), "max_images": int(g["train_img"].max())})
    return pd.DataFrame(rows)


def report(folder: Path, out: Path | None = None, nfe: list[float] | None = None,
           fd_target: float | None = None) -> dict:
    """Write tables and figures for the records under ``folder``; returns what was written.

    Where models vary in training length (snapshots), also FD against training images at the NFE values ``nfe``
    (default: the smallest and largest there are) and the table of training images needed to reach FD
    ``fd_target`` (default: the baseline's final FD), appended to table.md and written to efficiency.csv."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results folder not found: {folder}")
    records_list = read_records(folder)
    if not records_list:
        raise UserError(f"no records in {folder} (expected {folder}/cells/*.json)")
    out = Path(out) if out else folder
    df = records_frame(records_list, get_registry())
    records = {r["cell_key"]: r for r in records_list}
    tables = write_tables(df, out)
    missing: dict = {}
    eff = _efficiency_frame(tables["cells"], "fd", nfe, missing)
    if len(eff):
        reach = images_to_reach(eff, "fd", fd_target, pairing_order(df))
        tables["efficiency"] = reach
        atomic_write_text(out / "efficiency.csv", reach.to_csv(index=False))
        shown = reach.assign(images=reach["images"].map(lambda v: "not reached" if pd.isna(v) else f"{int(v):,}"))
        text = (out / "table.md").read_text()
        atomic_write_text(out / "table.md", text + "\n".join([
            "## Training efficiency: training images to reach an FD", "",
            "The fewest training images (over the snapshots) whose mean FD over seeds is at most the target; the "
            "target is the first line's final FD unless `--fd-target` is given.", "",
            _drop_constant(shown, keep=("dataset", "line", "nfe", "images")).to_markdown(index=False), ""]))
    df = df.assign(_series=_series(df))  # after the tables: a label for figures, not a column
    figures = (_lines_vs_nfe(tables["cells"], "fd", out, "fd_vs_nfe", "FD")
               + _lines_vs_train_img(eff, "fd", out, "FD")
               + _lines_vs_nfe(tables["cells"], "fid", out, "fid_vs_nfe", "FID")
               + _lines_vs_nfe(tables["cells"], "trunc_err", out, "trunc_err_vs_nfe", "truncation error")
               + _model_bars(tables["models"], out, "curvature", "curvature (0 = straight)", "curvature.png")
               + _model_bars(tables["models"], out, "pair_cost_ratio", "pair cost ratio (1 = independent)",
                             "pair_cost.png")
               + _trajectories(df, records, folder, out)
               + _tangent_strips(df, records, folder, out)
               + _sample_grids(df, records, folder, out))
    return {"tables": tables, "figures": figures, "out": out, "records": len(records_list), "nfe_missing": missing}
