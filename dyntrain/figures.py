"""Figures from the tidy frame of `dyntrain.tables.load`: the paper's (Figs. 8-13 form) with matplotlib,
as PNG and SVG, and the interactive ones of report.html with plotly."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure  # no pyplot: no global state, and savefig picks Agg/SVG itself
from plotly.colors import qualitative

from dyntrain.sampling import POLICIES
from dyntrain.tables import GREEK, arms, finished, grid_table, grids, missing, slug

# Resample events (dyntrain.sampling): type I keeps from the set just trained, type II from the best one.
# random's fresh draw every epoch ("new") is its nature, not an event: not marked.
RESAMPLE_MARKERS = {"I": ("triangle-up", "resample type I"), "II": ("diamond", "resample type II")}

def _figure(ncols=1):
    fig = Figure(figsize=(6.5 * ncols, 4.5), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _band(ax, x, runs_by_x, label):
    mean, std = runs_by_x.mean(axis=1), runs_by_x.std(axis=1).fillna(0)
    (line,) = ax.plot(x, mean, label=label)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_curves(df: pd.DataFrame, elitism: bool = False):
    """Figs. 8-13: validation and training accuracy per epoch for each arm, mean ± std over seeds;
    with elitism each run's curve is its running maximum (Fig. 11)."""
    fig, (val_ax, train_ax) = _figure(2)
    fin = finished(df)
    for setting in arms(fin.drop_duplicates("run")):
        arm = fin[fin.setting == setting]
        for ax, col in ((val_ax, "val_acc"), (train_ax, "train_acc")):
            wide = arm.pivot(index="epoch", columns="run", values=col) * 100
            _band(ax, wide.index, wide.cummax() if elitism else wide, setting)
    for ax, what in ((val_ax, "validation"), (train_ax, "training")):
        ax.set(xlabel="epoch", ylabel=f"{what} accuracy (%)", title=what + (" (elitism)" if elitism else ""))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    val_ax.legend(fontsize="small" if fin.setting.nunique() < 8 else "xx-small")
    return fig


def plot_time(df: pd.DataFrame):
    """Validation accuracy against wall time, mean ± std over seeds at each epoch."""
    fig, (ax,) = _figure()
    fin = finished(df)
    for setting in arms(fin.drop_duplicates("run")):
        arm = fin[fin.setting == setting]
        acc = arm.pivot(index="epoch", columns="run", values="val_acc") * 100
        t = arm.pivot(index="epoch", columns="run", values="wall_time_s").mean(axis=1)
        _band(ax, t, acc, setting)
    ax.set(xlabel="wall time (s)", ylabel="validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_heatmap(table: pd.DataFrame, title: str = ""):
    """An α x β grid_table's means as a heat map, each cell annotated."""
    fig, (ax,) = _figure()
    mean = table["mean"]
    im = ax.imshow(mean.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(mean.shape[1]), [f"{b:g}" for b in mean.columns])
    ax.set_yticks(range(mean.shape[0]), [f"{a:g}" for a in mean.index])
    ax.set(xlabel="β", ylabel="α", title=title)
    for i, row in enumerate(mean.to_numpy(dtype=float)):
        for j, v in enumerate(row):
            if v == v:  # not NaN: an empty cell gets no text
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize="small",
                        color="k" if im.norm(v) > 0.6 else "w")  # dark text on the light (high) end of viridis
    fig.colorbar(im, ax=ax)
    return fig


def write(df: pd.DataFrame, out, elitism: bool = False, formats=("png", "svg")) -> list[Path]:
    """Write the curves (and with `elitism` also their running-maximum form), accuracy against wall
    time and one heat map per α x β grid; return the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = {"curves": plot_curves(df), "accuracy_vs_time": plot_time(df)}
    if elitism:
        figs["curves_elitism"] = plot_curves(df, elitism=True)
    labels = grids(df)
    for label in labels:
        title = f"best validation accuracy (%), {label}"
        figs[slug("heatmap", label, labels)] = plot_heatmap(grid_table(df, grid=label), title)
    paths = [out / f"{name}.{fmt}" for name in figs for fmt in formats]
    for p in paths:
        figs[p.stem].savefig(p, dpi=120)
    return paths


# ---------------------------------------------------------------- interactive (plotly), for report.html

def parcoords_figure(runs: pd.DataFrame, varying: list[str]):
    """Parallel coordinates: policy (categorical, as integers with their names), α, β, δ, γ and any other
    varying numeric parameter, then accuracy. Finished runs if any, else every run with an accuracy."""
    r = runs[runs.best_val_acc.notna()]
    if (r.status == "finished").any():
        r = r[r.status == "finished"]
    if r.empty:
        return None
    policies = [p for p in list(POLICIES) if p in set(r.policy)] + sorted(set(r.policy) - set(list(POLICIES)))
    dims = [dict(label="policy", values=[policies.index(p) for p in r.policy], tickvals=list(range(len(policies))),
                 ticktext=policies, range=[-0.5, len(policies) - 0.5] if len(policies) == 1 else None)]
    # α, β, δ, γ where they vary among these runs (all four if none does), then any other varying number.
    greek = [k for k in GREEK if r[k].nunique() > 1] or list(GREEK)
    extra = [k for k in [k for k in varying if k in r] if k not in ("policy", *GREEK, "seed")
             and pd.api.types.is_numeric_dtype(r[k]) and r[k].notna().all()]
    for k in [*greek, *extra]:
        values = r[k].astype(float)
        dims.append(dict(label=GREEK.get(k, k), values=list(values), range=_span(values)))
    for k, label in (("best_val_acc", "best val acc (%)"), ("test_acc_at_best_val", "test acc at best (%)")):
        values = (100 * r[k].astype(float)).fillna(0)
        dims.append(dict(label=label, values=list(values), range=_span(values)))
    acc = 100 * r.best_val_acc.astype(float)
    fig = go.Figure(go.Parcoords(
        line=dict(color=list(acc), colorscale="Viridis", showscale=True, colorbar=dict(title="best val acc (%)")),
        dimensions=[{k: v for k, v in d.items() if v is not None} for d in dims]))
    which = "finished trials" if (r.status == "finished").all() else "trials (none finished yet)"
    fig.update_layout(title=dict(text=f"{len(r)} {which}: drag along an axis to select a range", y=0.98),
                      height=480, margin={"l": 90, "r": 60, "t": 110, "b": 40})
    return fig


def _span(values: pd.Series) -> list[float]:
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:  # one value: a visible range around it
        pad = abs(lo) * 0.05 or 1.0
        return [lo - pad, hi + pad]
    return [lo, hi]


def curve_figures(df: pd.DataFrame, runs: pd.DataFrame) -> dict[str, Any]:
    """Validation accuracy of every trial against epoch and against wall time; one colour per trial
    (a legend entry toggles it in both), resamples marked by type."""
    d = df[df.epoch.notna() & df.val_acc.notna()].sort_values(["run", "epoch"])
    if d.empty:
        return {}
    palette = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
    figs = {}
    for key, x, xlabel in (("epoch", "epoch", "epoch"), ("time", "wall_time_s", "wall time (s)")):
        fig = go.Figure()
        for i, (run, g) in enumerate(d.groupby("run", sort=False)):
            name = f"{runs['name'].get(run, run)} · {runs.setting.get(run, '')}"
            fig.add_trace(go.Scatter(
                x=g[x], y=100 * g.val_acc, mode="lines+markers", name=name, legendgroup=run,
                line=dict(color=palette[i % len(palette)], width=1.5), marker=dict(size=4),
                customdata=list(zip(g.epoch, g.wall_time_s)),
                hovertemplate=f"<b>{escape(name)}</b><br>epoch %{{customdata[0]}}, %{{customdata[1]:.1f}} s"
                              "<br>val acc %{y:.2f}%<extra></extra>"))
        for kind, (symbol, label) in RESAMPLE_MARKERS.items():
            ev = d[d["resample"].astype(str) == kind]
            if ev.empty:
                continue
            names = [f"{runs['name'].get(r, r)} · {runs.setting.get(r, '')}" for r in ev.run]
            fig.add_trace(go.Scatter(
                x=ev[x], y=100 * ev.val_acc, mode="markers", name=label, legendgroup=f"resample-{kind}",
                marker=dict(symbol=symbol, size=11, color="rgba(0,0,0,0)", line=dict(color="black", width=1.5)),
                customdata=list(zip(names, ev.epoch, ev.beta_n.fillna(float("nan")))),
                hovertemplate=f"<b>%{{customdata[0]}}</b><br>{label} after epoch %{{customdata[1]}}"
                              "<br>β_n %{customdata[2]:.3f}<extra></extra>"))
        fig.update_layout(title=f"validation accuracy against {xlabel}", xaxis_title=xlabel,
                          yaxis_title="validation accuracy (%)", height=480, hovermode="closest",
                          legend=dict(font=dict(size=10)))
        figs[key] = fig
    return figs


def heatmap_figure(t: pd.DataFrame, label: str):
    """A grid_table's means as an interactive heat map: α down, β across, n shown where > 1."""
    mean, n = t["mean"], t["n"]
    text = [[("" if missing(v) else f"{v:.1f}") + (f"<br>n={c}" if c > 1 else "") for v, c in zip(row, crow)]
            for row, crow in zip(mean.to_numpy(dtype=float), n.to_numpy())]
    fig = go.Figure(go.Heatmap(
        z=mean.to_numpy(dtype=float), x=[f"{b:g}" for b in mean.columns], y=[f"{a:g}" for a in mean.index],
        text=text, texttemplate="%{text}", colorscale="Viridis", colorbar=dict(title="%"),
        hovertemplate="α %{y}, β %{x}<br>best val acc %{z:.2f}%<extra></extra>"))
    fig.update_layout(title=f"best validation accuracy (%), {label}", xaxis_title="β", yaxis_title="α",
                      xaxis_type="category", yaxis_type="category", height=380)
    fig.update_yaxes(autorange="reversed")  # α from the top down, as Table 2 and the report's heat map
    return fig
