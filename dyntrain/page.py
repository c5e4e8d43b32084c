"""One self-contained, interactive report.html of Ray Tune experiments and `dyntrain train` folders.

    from dyntrain.page import write_html
    write_html(["results/ray/paper-grid"], "report.html")            # or a frame of dyntrain.tables.load
    write_html(df, "report.html", live=True, refresh_s=10)            # a page that reloads itself

The page opens offline from a file: plotly.js, the styles and the small table script are inlined
once, and nothing on it makes a request. It holds, from the frame of `dyntrain.tables.load`:

  * the trials: every varying parameter and the key metrics, with status, sortable (click a header)
    and filterable (type words; every word must appear in the row);
  * a parallel-coordinates view of policy, α, β, δ, γ (and any other varying parameter) against accuracy;
  * every trial's validation accuracy against epoch and against wall time, resamples marked by type;
  * the α x β heat map of each grid, the policy table with its 95% CIs and the time to accuracy,
    as `dyntrain report` computes them;
  * the recorded environments (device, torch, dyntrain, command line) of the runs.

`dyntrain.live.LiveReport` keeps such a page current in a Tune experiment while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from datetime import datetime
from html import escape
from importlib import resources
from pathlib import Path

import pandas as pd
import plotly
from plotly.offline import get_plotlyjs

import dyntrain
from dyntrain import claims, tables
from dyntrain import figures as plots
from dyntrain.config import TrainConfig
from dyntrain.runs import atomic_write, environments
from dyntrain.sampling import POLICIES

GREEK = tables.GREEK
# Config fields that never make two runs differ in what they compute: never shown as parameters.
NOT_PARAMETERS = {"data_dir", "progress"}
STATUS = {"finished": "finished", "in_progress": "running", "pending": "pending", "error": "error"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# ---------------------------------------------------------------- the entry points

def write_html(paths_or_df, out_file, *, live: bool = False, refresh_s: float = 10, title: str | None = None) -> Path:
    """Write the report of `paths_or_df` (experiment directories and train folders, or a frame of
    `dyntrain.tables.load`) to `out_file`, atomically; return its path. With `live` the page reloads
    itself every `refresh_s` seconds and says when it was updated and how many trials finished."""
    df = paths_or_df if isinstance(paths_or_df, pd.DataFrame) else tables.load(paths_or_df)
    page = render(df, live=live, refresh_s=refresh_s, title=title)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_file, page)  # a browser reloading the page sees the old one or the new, never half
    return out_file


def html_table(shown: pd.DataFrame, kind: str) -> str:
    """A table of `dyntrain.tables` in its shown form (a `show_*` formatter's: mean ± std, CIs, times
    as 32m28s) as an HTML <table> of class `kind`: what report.html shows, for any page that wants one."""
    return _table(shown, cls=f"report-table {kind}")


# ---------------------------------------------------------------- the page

def render(df: pd.DataFrame, *, live: bool = False, refresh_s: float = 10, title: str | None = None) -> str:
    """The whole page as a string (see `write_html`)."""
    runs = trial_table(df, live)
    n, done = len(runs), int((runs.status == "finished").sum())
    errors = int((runs.status == "error").sum())
    now = datetime.now()
    title = title or "dyntrain report: " + _sources_name(df)
    state = (f"live: updated {now:%H:%M:%S}, {done} of {n} trials finished" if live
             else f"updated {now:%Y-%m-%d %H:%M:%S}, {done} of {n} trials finished")
    if errors:
        state += f", {errors} failed"

    figs: list[str] = []  # plotly figures as <div>s; plotly.js goes in once, in <head>
    sections = [
        _section("trials", "Trials", _trials_html, runs),
        _section("parcoords", "Parameters against accuracy", _parcoords_html, runs, figs),
        _section("curves", "Validation accuracy of every trial", _curves_html, df, runs, figs),
        _section("grid", "α × β grid", _grids_html, df, figs),
        _section("policies", "Policies (finished runs)", _tables_html, df),
        _section("environment", "Environment", _environment_html, df),
    ]

    head = [
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # The page makes no request: say so to the browser too (inline scripts, styles and data: images only).
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; script-src \'unsafe-inline\' '
        '\'unsafe-eval\'; style-src \'unsafe-inline\'; img-src data: blob:; font-src data:">',
    ]
    if live:
        head.append(f'<meta http-equiv="refresh" content="{max(1, int(round(refresh_s)))}">')
    head += [f"<title>{escape(title)}</title>", f"<style>{_asset('report.css')}</style>"]
    if figs:
        head.append(f'<script type="text/javascript">{get_plotlyjs()}</script>')  # what include_plotlyjs=True inlines
    nav = " · ".join(f'<a href="#{k}">{v}</a>' for k, v in (
        ("trials", "trials"), ("parcoords", "parameters"), ("curves", "curves"), ("grid", "grid"),
        ("policies", "policies"), ("environment", "environment")))
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", *head, "</head>",
        f'<body data-live="{str(live).lower()}">',
        f"<header><h1>{escape(title)}</h1>",
        f'<p id="state" class="{"live" if live else "done"}">{escape(state)}</p>{_headline_html(df)}<nav>{nav}</nav></header>',
        "<main>", *sections, "</main>", f"<script>{_asset('report.js')}</script>", "</body>", "</html>", ""])


def _headline_html(df: pd.DataFrame) -> str:
    """What the method saved and cost against both references (`claims.headline`), from finished runs."""
    if tables.finished(df).empty:
        return ""
    try:
        lines = claims.headline(tables.policy_table(df))
    except tables.ReportError:
        return ""
    return '<ul id="headline">' + "".join(f"<li>{escape(line)}</li>" for line in lines) + "</ul>"


def _section(key: str, heading: str, build, *args) -> str:
    """A <section> whose body is build(*args); a section that fails says why and leaves the others be
    (a live page of a half-run experiment is worth more than none)."""
    try:
        body = build(*args)
    except Exception as err:  # noqa: BLE001
        body = _note(f"this section could not be drawn: {type(err).__name__}: {err}")
    return f'<section id="{key}"><h2>{escape(heading)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _figure_html(fig, figs: list[str], div_id: str) -> str:
    fig.update_layout(template="plotly_white")
    if fig.layout.margin.t is None:
        fig.update_layout(margin={"l": 60, "r": 30, "t": 50, "b": 50})
    html = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)
    figs.append(div_id)
    return f'<div class="figure">{html}</div>'


# ---------------------------------------------------------------- the trial table

def trial_table(df: pd.DataFrame, live: bool = False) -> pd.DataFrame:
    """`dyntrain.tables.runs` of every run (finished or not) with two columns of the page: `name` (a
    short trial name) and `shown_status` (finished, stopped early, running (live) or in progress, pending, error)."""
    r = tables.runs(df)
    r["name"] = _short_names(r.index, r.source)
    shown = STATUS if live else {**STATUS, "in_progress": "in progress"}  # a stale folder is not running
    r["shown_status"] = [("stopped early" if early and status == "finished" else shown.get(status, status))
                         for status, early in zip(r.status, r.early_stopped)]
    return r


def varying(r: pd.DataFrame) -> list[str]:
    """TrainConfig fields whose value differs between the runs, in the config's order (policy first)."""
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_PARAMETERS and f.name in r]
    out = [k for k in fields if r[k].map(_str).nunique() > 1]
    return (["policy"] if "policy" in r else []) + [k for k in out if k != "policy"]


def _short_names(runs: Iterable[str], sources: Iterable[str]) -> list[str]:
    """A Ray trial keeps its experiment/trial_id (without the experiment when all share one); a train
    folder its path below the folders' common parent."""
    runs, sources = list(runs), list(sources)
    folders = [run for run, src in zip(runs, sources) if run == src]
    parent = os.path.commonpath(folders) if len(folders) > 1 else str(Path(folders[0]).parent) if folders else ""
    experiments = {src for run, src in zip(runs, sources) if run != src}
    out = []
    for run, src in zip(runs, sources):
        if run == src:
            out.append(os.path.relpath(run, parent) if parent else run)
        else:
            out.append(run.split("/", 1)[1] if len(experiments) == 1 and "/" in run else run)
    return out


# Columns of the trial table: key -> (heading, cell text, sort key). A cell's sort key is its raw number.
def _acc(x) -> str:
    return "—" if tables.missing(x) else f"{100 * x:.2f}"


METRIC_COLUMNS = {
    "epochs_done": ("epochs", None, None),  # "2/2": filled per row
    "best_val_acc": ("best val acc (%)", _acc, None),
    "test_acc_at_best_val": ("test acc at best val (%)", _acc, None),
    "last_val_acc": ("last val acc (%)", _acc, None),
    "time_s": ("time", tables.fmt_time, None),
    "images_seen": ("images seen", lambda x: "—" if tables.missing(x) else f"{x:,.0f}", None),
    "gpu_s": ("GPU-s", lambda x: "—" if tables.missing(x) else f"{x:,.1f}", None),
}


def _trials_html(runs: pd.DataFrame) -> str:
    if runs.empty:
        return _note("no trials yet")
    params = varying(runs)
    cols = ["name", "shown_status", "setting", *params, *[k for k in METRIC_COLUMNS if k in runs]]
    if "gpu_s" in cols and runs["gpu_s"].isna().all():
        cols.remove("gpu_s")
    where = "node_ip" in runs and runs["node_ip"].notna().any()
    if where:
        cols.append("where")
    heads = {"name": "trial", "shown_status": "status", "setting": "setting", "where": "where",
             **{k: GREEK.get(k, k) for k in params}, **{k: v[0] for k, v in METRIC_COLUMNS.items()}}
    numeric = {*METRIC_COLUMNS, *[k for k in params if pd.api.types.is_numeric_dtype(runs[k])
                                  and not pd.api.types.is_bool_dtype(runs[k])]}
    head = "".join(f'<th data-col="{k}" data-type="{"num" if k in numeric else "text"}" scope="col">'
                   f'<button type="button">{escape(heads[k])}</button></th>' for k in cols)
    rows = []
    for run, r in runs.iterrows():
        cells = []
        for k in cols:
            if k == "name":
                text, key = r["name"], r["name"]
                cells.append(f'<td data-col="name" title="{escape(run)}">{escape(text)}</td>')
                continue
            if k == "where":
                gpu_ids = r.get("gpu_ids")
                gpus = "" if tables.missing(gpu_ids) or str(gpu_ids) == "" else f" GPU {_str(gpu_ids)}"  # "" on the CPU
                text = key = _str(r.get("node_ip")) + gpus
            elif k == "epochs_done":
                text, key = f"{'—' if tables.missing(r[k]) else int(r[k])}/{r['epochs']}", r[k]
            elif k in METRIC_COLUMNS:
                text, key = METRIC_COLUMNS[k][1](r[k]), r[k]
            elif k in GREEK and not _reads(r["policy"], k):
                cells.append(f'<td data-col="{k}" class="unused" title="not read by the {escape(str(r["policy"]))} '
                             f'policy ({escape(_str(r[k]))} in its config)">·</td>')
                continue
            else:
                text, key = _str(r[k]), r[k]
            extra = ""
            if k == "shown_status":
                extra = f' class="status {escape(r["status"])}{" early" if r["early_stopped"] else ""}"'
                if r["status"] == "finished" and r["early_stopped"]:
                    extra += ' title="stopped by the scheduler (ASHA) before its epochs"'
                elif r["stopped"]:
                    extra += f' title="stopped: {escape(str(r["stopped"]))}"'
            sort = "" if tables.missing(key) else f' data-sort="{escape(str(key))}"'
            cells.append(f'<td data-col="{k}"{sort}{extra}>{escape(text)}</td>')
        rows.append(f'<tr data-run="{escape(run)}">{"".join(cells)}</tr>')
    counts = runs.shown_status.value_counts()
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    return (f'<p class="controls"><label>filter <input id="filter" type="search" '
            f'placeholder="words that must all appear in a row, e.g. dynamic finished"></label> '
            f'<span id="shown">{len(runs)} of {len(runs)} trials</span> <span class="muted">({escape(summary)})</span></p>'
            f'<div class="scroll"><table id="trial-table" class="trials"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>'
            '<p class="muted">Click a header to sort (again to reverse). Accuracies are the best validation accuracy over '
            'epochs and the test accuracy at that epoch; time and images seen at the last epoch.</p>')


# ---------------------------------------------------------------- figures

def _parcoords_html(runs: pd.DataFrame, figs: list[str]) -> str:
    fig = plots.parcoords_figure(runs, varying(runs))
    return _figure_html(fig, figs, "fig-parcoords") if fig else _note("no trial with a validation accuracy yet")


def _curves_html(df: pd.DataFrame, runs: pd.DataFrame, figs: list[str]) -> str:
    curves = plots.curve_figures(df, runs)
    if not curves:
        return _note("no trial has finished an epoch yet")
    return "".join(_figure_html(fig, figs, f"fig-curves-{key}") for key, fig in curves.items())


def _grids_html(df: pd.DataFrame, figs: list[str]) -> str:
    try:
        labels = tables.grids(df)
    except Exception:  # noqa: BLE001 - a section never keeps the others from the page
        labels = []
    if not labels:
        return _note("no α × β grid among the finished runs (dynamic or variant runs over several α or β)")
    out = []
    for i, label in enumerate(labels):
        t = tables.grid_table(df, "best_val_acc", label)
        fig = plots.heatmap_figure(t, label)
        out.append(_figure_html(fig, figs, f"fig-heatmap-{i}"))
        shown = [html_table(tables.show_grid(tables.grid_table(df, value, label)), kind) for value, kind in
                 (("best_val_acc", "grid"), ("test_acc_at_best_val", "grid"), ("time_s", "time"))]
        out.append(f"<details><summary>{escape(label)}: mean ± std over seeds</summary>{''.join(shown)}</details>")
    return "".join(out)


def _tables_html(df: pd.DataFrame) -> str:
    if tables.finished(df).empty:
        return _note("no finished runs yet: the policy table and time to accuracy compare finished runs only")
    out = []
    try:
        out.append("<h3>Accuracy, time and images per policy (test accuracy at the best validation epoch; "
                   "mean ± std over seeds, 95% CI half-width by Student t; each arm against full data and "
                   "against full data at equal images: the difference with its 95% CI and p-value by Welch's "
                   "test, and a verdict at p &lt; 0.05)</h3>")
        out.append(html_table(tables.show_policies(tables.policy_table(df)), "policies"))
    except tables.ReportError as err:
        out.append(_note(str(err)))
    try:
        tta = tables.time_to_accuracy(df)
    except tables.ReportError:
        tta = pd.DataFrame()
    out.append("<h3>Time to accuracy (to 95% and 99% of the full-data run's best validation accuracy)</h3>")
    out.append(html_table(tables.show_time_to_accuracy(tta), "time_to_accuracy") if not tta.empty else _note("no full-data reference run"))
    paper = claims.paper_table(df)
    if not paper.empty:
        out.append("<h3>Beside the paper's reported numbers (same policy, α, β, augmentation and epochs; the "
                   "paper's times are on a GTX 1070)</h3>")
        out.append(html_table(claims.show_paper(paper), "paper"))
    return "".join(out)


# ---------------------------------------------------------------- environment

def _environment_html(df: pd.DataFrame) -> str:
    out = []
    for env in environments(df.source.unique()):
        sources = env.pop("sources")
        rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_env_value(v))}</td></tr>" for k, v in env.items())
        names = ", ".join(_experiment_name(s) for s in sources[:5]) + (f" and {len(sources) - 5} more" if len(sources) > 5 else "")
        out.append(f'<h3>{escape(names)}</h3><table class="env">{rows}</table>')
    if not out:
        out.append(_note("no environment recorded (environment.json of a `dyntrain tune` experiment, "
                         "summary.json of a finished `dyntrain train` run)"))
    out.append(f'<p class="muted">Page written by dyntrain {escape(dyntrain.__version__)} with plotly '
               f'{escape(plotly.__version__)} from {escape(", ".join(map(str, df.source.unique()[:10])))}.</p>')
    return "".join(out)


def _env_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return json.dumps(v) if isinstance(v, dict) else str(v)


# ---------------------------------------------------------------- helpers

def _table(t: pd.DataFrame, cls: str = "") -> str:
    """A frame of strings as a plain <table>: the index as row headers, its name heading their column."""
    index_name = t.index.name or ""
    head = f'<th scope="col">{escape(str(index_name))}</th>' + "".join(f'<th scope="col">{escape(str(c))}</th>' for c in t.columns)
    rows = "".join(f'<tr><th scope="row">{escape(str(i))}</th>' + "".join(f"<td>{escape(_str(v))}</td>" for v in row) + "</tr>"
                   for i, row in zip(t.index, t.itertuples(index=False)))
    return f'<div class="scroll"><table class="{escape(cls)}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _reads(policy: str, param: str) -> bool:
    """Whether `policy` reads `param` (True for a policy this version does not know)."""
    return policy not in POLICIES or param in POLICIES[policy].params


def _sources_name(df: pd.DataFrame) -> str:
    """Tune experiments by name; train folders by their common parent folder (or their name, if one)."""
    names = {_experiment_name(s) for s in df.source[df.run != df.source].unique()}
    folders = list(df.source[df.run == df.source].unique())
    if len(folders) == 1:
        names.add(_experiment_name(folders[0]))
    elif folders:
        names.add(_experiment_name(os.path.commonpath(folders)) + "/")
    return ", ".join(sorted(names))


def _experiment_name(source) -> str:
    return str(source).rstrip("/").rsplit("/", 1)[-1]


def _str(v) -> str:
    if tables.missing(v):
        return "—"
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) >= 1000 else f"{v:g}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _asset(name: str) -> str:
    """The page's own style sheet and table script (dyntrain/assets), inlined into every page."""
    return resources.files("dyntrain").joinpath("assets", name).read_text(encoding="utf-8")
