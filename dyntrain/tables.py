"""The paper's tables (PAPER.md Tables 2-5) and time to accuracy, from the tidy frame of runs.

    df = load(["results/ray/paper-grid", "runs/full-seed0"])   # one row per run x epoch
    grid_table(df)["mean"]                                     # Table 2: α x β of best val. accuracy

Every table is a small pure function of that frame, with its formatter beside it (`show_*`: the
strings of the Markdown and LaTeX tables). Only finished runs enter tables and figures; runs in
progress, pending or failed are listed apart (`unfinished`). Accuracies are fractions in the frame
and percent in the tables. Figures (`dyntrain.figures`) and the page (`dyntrain.page`) are drawn
from these tables; `dyntrain report` (dyntrain.cli) writes them all.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from scipy import stats

from dyntrain.config import FIELDS, RUNTIME
from dyntrain.runs import ReportError, read
from dyntrain.sampling import POLICIES

__all__ = ["ReportError", "load"]  # the rest is public by name
CONFIG = list(FIELDS)
# What makes two runs the same arm of a comparison; seeds are its replicates.
SETTING = [k for k in CONFIG if k != "seed" and k not in RUNTIME]
PARAMS = tuple(dict.fromkeys(k for cls in POLICIES.values() for k in cls.params))  # alpha, beta, delta, gamma
METHOD = ("policy", *PARAMS)
# Runs that differ only in these are compared against the same full-data run (Table 4 pairs a
# 200-epoch full run with an 80-epoch variant run).
CONTEXT = [k for k in SETTING if k not in METHOD + ("epochs", "time_budget_s", "image_budget")]
GREEK = {"alpha": "α", "beta": "β", "delta": "δ", "gamma": "γ"}
# A difference is "detectable" when Welch's two-sided test rejects equal means at this level.
ALPHA_TEST = 0.05
EQUAL = "equal images"  # the label of full data stopped at the images of a subset arm (alpha x epochs)


def load(paths) -> pd.DataFrame:
    """`dyntrain.runs.read` (one row per run x epoch) plus the labels of the comparison: `setting`
    (one arm: the policy, its parameters and whatever else varies) and `grid` (its α x β grid)."""
    df = read(paths)
    ref = df[df.policy == "full"].groupby(key(df, CONTEXT))["subset_size"].max()
    missing = df.n_train.isna()  # old Ray results omit n_train: a full-data run's subset is the pool
    df.loc[missing, "n_train"] = key(df[missing], CONTEXT).map(ref)
    df["setting"], df["grid"] = labels(df)
    return df


def key(df: pd.DataFrame, keys) -> pd.Series:
    return pd.Series(["|".join(map(str, row)) for row in df[list(keys)].itertuples(index=False)], index=df.index)


def labels(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Short names for arms: the policy, its own parameters and whatever else varies between runs."""
    per_run = df.drop_duplicates("run")
    masked = per_run[SETTING].astype(object).copy()
    for k in PARAMS:
        masked.loc[~per_run.policy.map(lambda p, k=k: k in POLICIES[p].params), k] = None
    # A Greek parameter a policy does not use is masked out; any other field varies even between set and unset.
    varying = [k for k in SETTING if k != "policy" and (masked[k].dropna() if k in GREEK else masked[k]).map(str).nunique() > 1]

    def name(row, with_axes):
        own = [k for k in POLICIES[row.policy].params if k in varying or (with_axes and k in ("alpha", "beta"))]
        if not with_axes:  # a grid's label: what is fixed across its α x β cells
            own = [k for k in own if k not in ("alpha", "beta")]
        parts = [row.policy] + [f"{GREEK[k]}={row[k]:g}" for k in own]
        for k in varying:
            if k == "image_budget" and equal_images(row):
                parts += [f"({EQUAL})"]
            elif k not in GREEK and not (k != "augment" and pd.isna(row[k])):
                parts += (["+aug"] if row[k] else []) if k == "augment" else [f"{k}={row[k]}"]
        return " ".join(parts)

    setting = per_run.apply(lambda r: name(r, True), axis=1)
    grid = per_run.apply(lambda r: name(r, False) if "beta" in POLICIES[r.policy].params else None, axis=1)
    return df.run.map(dict(zip(per_run.run, setting))), df.run.map(dict(zip(per_run.run, grid)))


def equal_images(row) -> bool:
    """Full data stopped at alpha x epochs images: the budget of every subset arm with that alpha and epochs."""
    return row.policy == "full" and not missing(row.image_budget) and row.image_budget == row.alpha * row.epochs


# ---------------------------------------------------------------- cells

def missing(x) -> bool:
    """None, NaN or pandas' NA: a number a run does not have."""
    return x is None or (not isinstance(x, str) and bool(pd.isna(x)))


def fmt_time(s: float) -> str:
    """Seconds as the paper writes times: 32m28s, 1h02m03s; under a minute 4.2s."""
    if missing(s):
        return "—"
    if s < 60:
        return f"{s:.1f}s"
    h, m, sec = int(s // 3600), int(s % 3600 // 60), int(round(s % 60))
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def fmt_pm(mean, std, fmt) -> str:
    if missing(mean):
        return "—"
    return fmt(mean) + ("" if missing(std) else f" ± {fmt(std)}")


def fmt_num(x, spec=".1f", scale=1.0, suffix=""):
    return "—" if missing(x) else f"{x * scale:{spec}}{suffix}"


# ---------------------------------------------------------------- tables (each with its formatter)

def finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.status == "finished"]


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its configuration and labels, epochs done, best validation accuracy (max over
    epochs), test accuracy at that epoch, time and images seen at the last epoch, share of the pool
    trained on per epoch (subset_size / n_train)."""
    df = df.sort_values(["run", "epoch"])
    g = df.groupby("run", sort=False)
    last = g.tail(1).set_index("run")
    out = last[["source", "status", "early_stopped", "setting", "grid", *CONFIG, "n_train"]].copy()
    out["epochs_done"] = g["epoch"].max()
    out["best_val_acc"] = g["val_acc"].max()
    out["test_acc_at_best_val"] = last["test_acc_at_best_val"]
    out["last_val_acc"] = last["val_acc"]
    out["time_s"] = last["wall_time_s"]
    out["images_seen"] = last["images_seen"]
    out["share"] = g["subset_size"].mean() / out["n_train"]
    out["stopped"] = last["stopped"]
    for k in ("gpu_s", "node_ip", "node_id", "gpu_ids", "gpus"):  # Ray trials: cost and placement
        out[k] = last[k]
    return out


def unfinished(df: pd.DataFrame) -> pd.DataFrame:
    """Runs in progress, pending, interrupted or failed: kept out of every table and figure."""
    r = runs(df[df.status != "finished"])
    return r[["source", "status", "setting", "seed", "epochs_done", "epochs", "last_val_acc", "time_s"]]


def show_unfinished(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"status": table.status, "setting": table.setting, "seed": table.seed,
                         "epochs": [f"{fmt_num(d, '.0f')}/{e}" for d, e in zip(table.epochs_done, table.epochs)],
                         "last val acc (%)": [fmt_num(x, ".1f", 100) for x in table.last_val_acc],
                         "time": table.time_s.map(fmt_time)}, index=table.index)


def grids(df: pd.DataFrame) -> list[str]:
    """Labels of the α x β grids among the finished runs (one per dynamic/variant setting of δ, γ, …)."""
    return sorted(finished(df).grid.dropna().unique())


def grid_table(df: pd.DataFrame, value: str = "best_val_acc", grid: str | None = None) -> pd.DataFrame:
    """Table 2 (value="best_val_acc" or "test_acc_at_best_val", in %) and Table 3 (value="time_s") form:
    rows α, columns β, over finished dynamic/variant runs. Columns are (stat, β) with stat in mean, std
    (over seeds) and n, so `grid_table(df)["mean"]` is the α x β grid of means."""
    names = grids(df)
    if grid is None and len(names) > 1:
        raise ReportError(f"runs form several α x β grids ({'; '.join(names)}): pick one with grid=")
    r = runs(finished(df))
    r = r[r.grid == (grid or (names[0] if names else None))]
    if r.empty:
        raise ReportError(f"no finished dynamic or variant runs for grid {grid!r}")
    values = r[value] * (100 if "acc" in value else 1)
    g = values.groupby([r.alpha, r.beta])
    t = pd.concat({"mean": g.mean().unstack(), "std": g.std().unstack(), "n": g.size().unstack(fill_value=0)},
                  axis=1, names=["stat"])
    t.attrs["value"] = value
    return t.sort_index(ascending=False)


def show_grid(table: pd.DataFrame) -> pd.DataFrame:
    """mean ± std (over seeds) in each α x β cell; times as the paper writes them."""
    cell = fmt_time if table.attrs.get("value") == "time_s" else (lambda v: f"{v:.1f}")
    t = pd.DataFrame({f"{b:g}": [fmt_pm(m, s, cell) for m, s in zip(table["mean"][b], table["std"][b])]
                      for b in table["mean"].columns}, index=[f"{a:g}" for a in table.index])
    return t.rename_axis("α \\ β")


def time_table(df: pd.DataFrame, grid: str | None = None) -> pd.DataFrame:
    """Table 3 form: training time (s, wall time at the last epoch) on the α x β grid."""
    return grid_table(df, "time_s", grid)


def policy_table(df: pd.DataFrame, metric: str = "test_acc_at_best_val") -> pd.DataFrame:
    """Tables 4/5 form: one row per arm (policy, parameters, ± augmentation) over finished runs.
    acc is `metric` in % (mean, std over seeds and the 95% CI half-width, Student t). Each arm is
    compared with two references of the same data, augmentation and optimiser: `full`, full data with
    no budget (the one with most epochs), and `equal`, full data stopped at the arm's alpha x epochs
    images (`equal_images`). Against each: time_saved (1 - time/time_ref), and the accuracy difference
    (arm - reference, points) with its 95% CI and p-value by Welch's test, and a verdict (`compare`).
    acc_lost is acc_full - acc."""
    r = runs(finished(df))
    if r.empty:
        raise ReportError("no finished runs")
    r = r.assign(acc=r[metric] * 100, val_acc=r.best_val_acc * 100, context=key(r, CONTEXT))
    g = r.groupby("setting")
    t = g[["policy", "augment", *PARAMS, "epochs", "context"]].first()
    t["n"], t["seeds"] = g.size(), g["seed"].nunique()  # fewer seeds than runs: repeats, not independent
    t["share"] = g["share"].mean()
    t["acc"], t["acc_std"] = g["acc"].mean(), g["acc"].std()
    t["acc_ci95"] = [stats.t.ppf(0.975, n - 1) * s / math.sqrt(n) if n > 1 else math.nan for n, s in zip(t.n, t.acc_std)]
    t["val_acc"] = g["val_acc"].mean()
    t["time_s"], t["images_seen"] = g["time_s"].mean(), g["images_seen"].mean()
    t["early_stopped"] = g["early_stopped"].sum()
    full = t.context.map(_references(r))
    equal = _equal_references(r)
    equal = pd.Series([equal.get((c, a, e)) if p != "full" else None for c, a, e, p in zip(t.context, t.alpha, t.epochs, t.policy)],
                      index=t.index)
    t["acc_lost"] = full.map(t.acc) - t.acc
    accs = g["acc"].apply(list)
    for name, ref in (("full", full), ("equal", equal)):
        t[f"ref_{name}"] = ref
        t[f"time_saved_{name}"] = 1 - t.time_s / ref.map(t.time_s)
        cmp = [compare(accs[s], accs[f]) if isinstance(f, str) and f != s else {} for s, f in zip(t.index, ref)]
        for k in ("diff", "lo", "hi", "p", "verdict"):
            t[f"{k}_{name}"] = [c.get(k, math.nan) for c in cmp]
    t["time_saved"] = t.time_saved_full
    for k in PARAMS:
        t[k] = t[k].astype(object).where(t.policy.map(lambda p, k=k: k in POLICIES[p].params), None)
    return t.loc[arms(r)].drop(columns="context")


def compare(a: list[float], b: list[float]) -> dict:
    """mean(a) - mean(b), its 95% confidence interval and two-sided p-value by Welch's t-test, and a
    verdict: "better"/"worse" when p < ALPHA_TEST, else "no detectable difference"; with fewer than two
    runs on a side (or no spread at all) nothing is computed and the verdict says so."""
    diff = sum(a) / len(a) - sum(b) / len(b)
    if min(len(a), len(b)) < 2:
        return {"diff": diff, "lo": math.nan, "hi": math.nan, "p": math.nan, "verdict": "too few runs"}
    test = stats.ttest_ind(a, b, equal_var=False)
    if math.isnan(test.pvalue):  # both sides constant: no variance to test with
        return {"diff": diff, "lo": math.nan, "hi": math.nan, "p": math.nan, "verdict": "no spread to test"}
    ci = test.confidence_interval(0.95)
    verdict = "no detectable difference" if test.pvalue >= ALPHA_TEST else "better" if diff > 0 else "worse"
    return {"diff": diff, "lo": ci.low, "hi": ci.high, "p": test.pvalue, "verdict": verdict}


def show_policies(table: pd.DataFrame) -> pd.DataFrame:
    seeds = [(str(n) if k == n else f"{n} runs, {k} seeds") + (f" ({e} early-stopped)" if e else "")
             for n, k, e in zip(table.n, table.seeds, table.early_stopped)]
    t = pd.DataFrame({"augment": table.augment.map({True: "yes", False: "no"}), "runs": seeds,
                      "images/epoch": [fmt_num(x, ".0f", 100, "%") for x in table.share],
                      "accuracy (%)": [fmt_pm(m, s, lambda v: f"{v:.2f}") for m, s in zip(table.acc, table.acc_std)],
                      "95% CI (±)": [fmt_num(h, ".2f") for h in table.acc_ci95],
                      "time": table.time_s.map(fmt_time)}, index=table.index)
    for name, title in (("full", "vs full"), ("equal", f"vs full, {EQUAL}")):
        t[f"time saved {title}"] = [fmt_num(x, ".0f", 100, "%") for x in table[f"time_saved_{name}"]]
        t[f"Δ acc. {title} (pts, 95% CI)"] = [
            "—" if missing(d) else f"{d:+.2f}" + ("" if missing(lo) else f" [{lo:+.2f}, {hi:+.2f}]")
            for d, lo, hi in zip(table[f"diff_{name}"], table[f"lo_{name}"], table[f"hi_{name}"])]
        t[f"p {title}"] = [fmt_num(p, ".3f") for p in table[f"p_{name}"]]
        t[f"verdict {title}"] = ["—" if missing(v) else v for v in table[f"verdict_{name}"]]
    t["images seen"] = [fmt_num(x, ",.0f") for x in table.images_seen]
    return t


def arms(r: pd.DataFrame) -> list[str]:
    """Settings in table order: without augmentation first, then by policy as PAPER.md lists them, α, β."""
    first = r.drop_duplicates("setting").set_index("setting")
    return sorted(first.index, key=lambda s: (bool(first.augment[s]), list(POLICIES).index(first.policy[s]),
                                              first.alpha[s] if first.policy[s] != "full" else 0,
                                              first.beta[s] if "beta" in POLICIES[first.policy[s]].params else 0, s))


def _equal_references(r: pd.DataFrame) -> dict[tuple, str]:
    """(context, alpha, epochs) -> setting of the full-data arm stopped at alpha x epochs images."""
    eq = r[r.apply(equal_images, axis=1) & r.time_budget_s.isna()]
    return {(c, a, e): s for c, a, e, s in zip(eq.context, eq.alpha, eq.epochs, eq.setting)}


def _references(r: pd.DataFrame) -> dict[str, str]:
    """context -> setting of its full-data reference: unbudgeted, most epochs."""
    full = r[(r.policy == "full") & r.time_budget_s.isna() & r.image_budget.isna()]
    full = full.sort_values("epochs", ascending=False).drop_duplicates("context")
    return dict(zip(full.context, full.setting))


def time_to_accuracy(df: pd.DataFrame, fractions=(0.95, 0.99), metric: str = "val_acc") -> pd.DataFrame:
    """For each arm with a full-data reference: wall time, images seen and epoch at which a run's
    per-epoch `metric` first reaches fraction f of the full arm's best (mean over its seeds of the max
    over epochs). Means over the runs that reach it; reached_P counts them out of n."""
    fin = finished(df)
    r = runs(fin).assign(context=lambda x: key(x, CONTEXT))
    ref = _references(r)
    rows = []
    for setting in arms(r):
        arm = r[r.setting == setting]
        if arm.context.iloc[0] not in ref:
            continue
        full_runs = r[r.setting == ref[arm.context.iloc[0]]].index
        best = fin[fin.run.isin(full_runs)].groupby("run")[metric].max().mean()
        row = {"setting": setting, "policy": arm.policy.iloc[0], "n": len(arm)}
        for f in fractions:
            p = f"{f * 100:g}"
            ep = fin[fin.run.isin(arm.index)]
            hit = ep[ep[metric] >= f * best].sort_values("epoch").drop_duplicates("run")
            row |= {f"target_{p}": 100 * f * best, f"reached_{p}": len(hit), f"time_s_{p}": hit.wall_time_s.mean(),
                    f"images_{p}": hit.images_seen.mean(), f"epoch_{p}": hit.epoch.mean()}
        rows.append(row)
    return pd.DataFrame(rows).set_index("setting") if rows else pd.DataFrame()


def show_time_to_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    t = pd.DataFrame({"runs": table.n}, index=table.index)
    for p in [c[len("target_"):] for c in table.columns if c.startswith("target_")]:
        t[f"{p}% target"] = [fmt_num(x, ".1f") for x in table[f"target_{p}"]]
        t[f"{p}% reached"] = [f"{k}/{n}" for k, n in zip(table[f"reached_{p}"], table.n)]
        t[f"{p}% time"] = table[f"time_s_{p}"].map(fmt_time)
        t[f"{p}% images"] = [fmt_num(x, ",.0f") for x in table[f"images_{p}"]]
    return t


# ---------------------------------------------------------------- writing

def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' own needs `tabulate`)."""
    t = table.reset_index()
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    head = "| " + " | ".join(cell(c) for c in t.columns) + " |"
    rule = "|" + "|".join("---" for _ in t.columns) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.itertuples(index=False)])


def write_table(table: pd.DataFrame, shown: pd.DataFrame, stem: Path, formats) -> list[Path]:
    """csv: the raw numbers (seconds, fractions, percent as in the table); md and tex: `shown`."""
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")  # not with_suffix: a grid named lr=0.001 keeps its dot
        if fmt == "csv":
            flat = table.copy()
            if isinstance(flat.columns, pd.MultiIndex):
                flat.columns = [f"beta={b:g} {s}" for s, b in flat.columns]
            flat.to_csv(path)
        elif fmt == "md":
            path.write_text(to_markdown(shown) + "\n")
        elif fmt == "tex":
            tex = shown.to_latex(escape=True)
            path.write_text(tex.replace("±", r"$\pm$").replace("α", r"$\alpha$").replace("β", r"$\beta$"))
        paths.append(path)
    return paths


def slug(stem: str, label: str, all_labels) -> str:
    """A file name for one of several grids: heatmap_dynamic_delta=0.05."""
    if len(all_labels) <= 1:
        return stem
    for k, g in GREEK.items():
        label = label.replace(g, k)
    return stem + "_" + re.sub(r"[^A-Za-z0-9.=-]+", "_", label).strip("_")


def tables(df: pd.DataFrame, metric: str = "test_acc_at_best_val") -> dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]:
    """Every table the runs allow, by file name: (numbers, shown form; None for the runs list)."""
    out: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]] = {}
    if not finished(df).empty:
        names = grids(df)
        for label in names:
            for value, name in (("best_val_acc", "grid_best_val_acc"), ("test_acc_at_best_val", "grid_test_acc"),
                                ("time_s", "grid_time")):
                t = grid_table(df, value, label)
                out[slug(name, label, names)] = (t, show_grid(t))
        t = policy_table(df, metric)
        out["policies"] = (t, show_policies(t))
        t = time_to_accuracy(df)
        if not t.empty:
            out["time_to_accuracy"] = (t, show_time_to_accuracy(t))
        out["runs"] = (runs(finished(df)), None)
    if (df.status != "finished").any():
        t = unfinished(df)
        out["unfinished"] = (t, show_unfinished(t))
    return out
