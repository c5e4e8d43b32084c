"""Claims beside their evidence: the paper's published numbers beside the measured arms, and the
headline sentences a README or the page may state, each generated from measured runs only.

    headline(tables.policy_table(df))   # one sentence per method arm and reference; "not measured" where none
    paper_table(df)                     # each measured arm beside the paper's number for the same setting
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from dyntrain.sampling import POLICIES
from dyntrain.tables import EQUAL, arms, finished, fmt_num, fmt_pm, fmt_time, missing, runs

METHOD_POLICIES = ("dynamic", "variant")  # the paper's method; the other arms are its references and baselines
REFERENCES = {"full": "full data for the same epochs", "equal": f"full data at {EQUAL} (α × epochs)"}


def headline(policies: pd.DataFrame) -> list[str]:
    """One sentence for each arm of the method against each reference of `tables.policy_table`: the
    time it saved and the accuracy difference with its 95% CI, p-value, verdict and the runs behind
    them; "not measured" for a reference (or the method) without runs."""
    method = policies[policies.policy.isin(METHOD_POLICIES)]
    if method.empty:
        return ["The method (dynamic or variant training): not measured in these runs."]
    lines = []
    for setting, row in method.iterrows():
        for name, what in REFERENCES.items():
            ref = row[f"ref_{name}"]
            if not isinstance(ref, str):
                lines.append(f"{setting} against {what}: not measured (no such reference run).")
                continue
            n_ref = int(policies.loc[ref, "n"])
            d, lo, hi, p, verdict = (row[f"{k}_{name}"] for k in ("diff", "lo", "hi", "p", "verdict"))
            ci = "" if missing(lo) else f", 95% CI [{lo:+.2f}, {hi:+.2f}], p = {p:.3f}"
            saved = row[f"time_saved_{name}"]
            time = "time not measured" if missing(saved) else f"{abs(saved):.0%} {'less' if saved >= 0 else 'more'} training time"
            lines.append(f"{setting} against {what} ({int(row.n)} vs {n_ref} runs): {time}, "
                         f"accuracy {d:+.2f} points{ci}: {verdict}.")
    return lines
def paper_numbers() -> pd.DataFrame:
    """The paper's reported results (Tables 2-5, Fig. 11; PAPER.md), one row per reported run:
    dyntrain/assets/paper.csv. Accuracy in %, time in seconds on the paper's GTX 1070."""
    with resources.files("dyntrain").joinpath("assets/paper.csv").open() as f:
        return pd.read_csv(f)


def paper_table(df: pd.DataFrame, metric: str = "test_acc_at_best_val") -> pd.DataFrame:
    """Each measured arm beside the paper's number for the same policy, α, β, augmentation and epochs
    (unbudgeted arms only). Measured accuracy is `metric` in % (the paper's own measure is the best
    test accuracy, which `--protocol paper` reproduces as best_val_acc)."""
    r = runs(finished(df))
    r = r[r.time_budget_s.isna() & r.image_budget.isna()].assign(acc=r[metric] * 100)
    paper = paper_numbers()
    rows = []
    for setting in arms(r) if not r.empty else []:
        arm = r[r.setting == setting]
        first = arm.iloc[0]
        match = paper[(paper.policy == first.policy) & (paper.augment == bool(first.augment))
                      & (paper.epochs == first.epochs)]
        for k in ("alpha", "beta"):
            if k in POLICIES[first.policy].params:
                match = match[match[k] == first[k]]
        for _, p in match.iterrows():
            rows.append({"setting": setting, "paper_table": p.table, "protocol": first.protocol, "n": len(arm),
                         "acc": arm.acc.mean(), "acc_std": arm.acc.std(), "paper_acc": p.accuracy,
                         "acc_minus_paper": arm.acc.mean() - p.accuracy, "time_s": arm.time_s.mean(),
                         "paper_time_s": p.time_s, "paper_note": "" if missing(p.note) else p.note})
    return pd.DataFrame(rows).set_index("setting") if rows else pd.DataFrame()


def show_paper(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"paper's table": table.paper_table, "protocol": table.protocol, "runs": table.n,
                         "accuracy (%)": [fmt_pm(m, s, lambda v: f"{v:.2f}") for m, s in zip(table.acc, table.acc_std)],
                         "paper (%)": [fmt_num(x, ".2f") for x in table.paper_acc],
                         "difference (pts)": [fmt_num(x, "+.2f") for x in table.acc_minus_paper],
                         "time": table.time_s.map(fmt_time), "paper's time": table.paper_time_s.map(fmt_time),
                         "note": table.paper_note}, index=table.index)


