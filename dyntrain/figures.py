"""The paper's figures (Figs. 8-13 form) from the tidy frame of `dyntrain.report.load`, as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dyntrain.report import arms, finished, grid_table, grids, slug

def _figure(ncols=1):
    from matplotlib.figure import Figure  # no pyplot: no global state, and savefig picks Agg/SVG itself

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


