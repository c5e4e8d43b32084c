"""report.html (dyntrain.page) and its live form (dyntrain.live.LiveReport).

Quick tests render pages of `dyntrain train` folders written in the contract format and drive
LiveReport with stand-in trials. The slow ones run a real tiny `dyntrain tune` search through the
command line, watch its report.html while it runs, and open the final page in the system's headless
Chromium, driven by Playwright: the DOM must hold every trial with the numbers of the report's runs
table, and the page must make no network request and log no console error.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from dyntrain import page as dpage
from dyntrain import runs, tables  # noqa: E402
from dyntrain.cli import write_report  # noqa: E402
from dyntrain.config import TrainConfig  # noqa: E402

N_TRAIN = 400
ENV = {"device": "cpu", "device_name": "x86_64", "torch": "2.99.0-test", "python": "3.11.0"}
STATE = re.compile(r'<p id="state"[^>]*>([^<]*)</p>')
REFRESH = re.compile(r'<meta http-equiv="refresh" content="(\d+)">')


# ---------------------------------------------------------------- stand-in runs

def epochs_of(config: dict) -> list[dict]:
    """Per-epoch records shaped like the engine's: accuracy rises with α, β and the epoch; a dynamic
    run resamples after every epoch but the first (type II on even epochs, I on odd ones)."""
    cfg = TrainConfig().to_dict() | config
    size = N_TRAIN if cfg["policy"] == "full" else cfg["alpha"]
    rows, best, at_best, seen, wall = [], -1.0, None, 0, 0.0
    for e in range(1, cfg["epochs"] + 1):
        val = 0.2 + 0.1 * e + size / 4000 + cfg["beta"] / 20 + 0.01 * cfg["seed"]
        if val > best:
            best, at_best = val, val - 0.02
        seen += size
        wall += size / 100 + 0.5 * cfg["seed"]
        resample = "none" if cfg["policy"] in ("full", "static") or e == 1 else ("II" if e % 2 == 0 else "I")
        rows.append({"epoch": e, "train_loss": 2.0 / e, "train_acc": min(1.0, val + 0.05), "val_acc": val,
                     "test_acc": val - 0.03, "best_val_acc": best, "test_acc_at_best_val": at_best,
                     "subset_size": size, "images_seen": seen, "resample": resample, "beta_n": cfg["beta"],
                     "epoch_time_s": size / 100, "wall_time_s": wall, "stopped": "epochs" if e == cfg["epochs"] else ""})
    return rows


def write_train_run(out: Path, finished: bool = True, epochs_done: int | None = None, **config) -> Path:
    cfg = TrainConfig().replace(epochs=3, **config).to_dict()
    rows = epochs_of(cfg)[:epochs_done]
    summary = {"config": cfg, "environment": ENV, "n_train": N_TRAIN, "best": {}, "final": {},
               "total_time_s": rows[-1]["wall_time_s"]} if finished else None
    runs.write_run(out, cfg, rows, summary)
    return out


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory) -> Path:
    """dynamic α {100, 200} x β {0.1, 0.5} x seeds {0, 1}, full x 2 seeds, static, and a random run
    still in progress (1 of 3 epochs, no summary.json)."""
    root = tmp_path_factory.mktemp("runs")
    for alpha in (100, 200):
        for beta in (0.1, 0.5):
            for seed in (0, 1):
                write_train_run(root / f"dyn_a{alpha}_b{beta}_s{seed}", policy="dynamic", alpha=alpha, beta=beta, seed=seed)
    for seed in (0, 1):
        write_train_run(root / f"full_s{seed}", policy="full", seed=seed)
    write_train_run(root / "static", policy="static", alpha=200)
    write_train_run(root / "random_running", finished=False, epochs_done=1, policy="random", alpha=200)
    return root


class Rows(HTMLParser):
    """The trial table of a page: {run: {column: text}} (by data-run and data-col), and its headers."""

    def __init__(self, page: str):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.heads: list[str] = []
        self._run = self._col = None
        self._in_table = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "trial-table":
            self._in_table = True
        elif self._in_table and tag == "th":
            self.heads.append(a["data-col"])
        elif self._in_table and tag == "tr" and "data-run" in a:
            self._run = a["data-run"]
            self.rows[self._run] = {}
        elif self._run and tag == "td":
            self._col = a["data-col"]
            self.rows[self._run][self._col] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
            self._run = None
        elif tag == "td":
            self._col = None

    def handle_data(self, data):
        if self._run and self._col:
            self.rows[self._run][self._col] += data


# The page's formats, written out here rather than taken from dyntrain.page (times as the tables
# write them: tables.fmt_time, tested against the paper's form in test_report.py).
def pct(x) -> str:
    return f"{100 * x:.2f}"


def expected_cells(r) -> dict[str, str]:
    """What the trial table must show for a row of `tables.runs` (or of runs.csv)."""
    cells = {"best_val_acc": pct(r.best_val_acc), "test_acc_at_best_val": pct(r.test_acc_at_best_val),
             "time_s": tables.fmt_time(r.time_s), "images_seen": f"{r.images_seen:,.0f}",
             "epochs_done": f"{int(r.epochs_done)}/{int(r.epochs)}"}
    if "gpu_s" in r and not pd.isna(r.gpu_s):
        cells["gpu_s"] = f"{r.gpu_s:,.1f}"
    return cells


def assert_self_contained(page: str) -> None:
    """No external script, style, image, frame or link, plotly.js inlined exactly once, ids unique."""
    assert not re.search(r"<(script|img|iframe|link|source|embed|object)\b[^>]*\b(src|href|data)\s*=", page, re.I)
    assert not re.search(r"""url\(\s*['"]?(https?:)?//""", page)
    assert page.count("<script") == 2 + page.count('class="plotly-graph-div"')  # plotly.js, the table's, one per figure
    assert len(re.findall(r"plotly\.js v\d", page)) == 1
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S)
    ids = re.findall(r'\sid="([^"]+)"', markup)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)  # getElementById finds each


# ---------------------------------------------------------------- the page (quick)

def test_page_of_train_folders(train_runs, tmp_path):
    out = dpage.write_html([train_runs], tmp_path / "report.html")
    assert out == tmp_path / "report.html" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    page = out.read_text()
    assert_self_contained(page)
    assert not REFRESH.search(page) and "could not be drawn" not in page
    assert re.fullmatch(r"updated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, 11 of 12 trials finished", STATE.search(page)[1])

    df = tables.load(train_runs)
    runs = tables.runs(df)
    table = Rows(page)
    assert set(table.rows) == set(runs.index) and len(runs) == 12
    assert table.heads[:5] == ["name", "shown_status", "setting", "policy", "alpha"]
    assert {"beta", "seed"} <= set(table.heads) and "lr" not in table.heads  # only what varies
    for run, r in runs.iterrows():
        cells = table.rows[run]
        assert cells["name"] == Path(run).name
        assert cells["shown_status"] == ("finished" if r.status == "finished" else "in progress")
        assert cells["setting"] == r.setting
        for col, text in expected_cells(r).items():
            assert cells[col] == text, (run, col)
        if r.policy == "full":  # parameters a policy does not read are blanked
            assert cells["alpha"] == cells["beta"] == "·"
        else:
            assert cells["alpha"] == str(r.alpha)
    # The figures: parallel coordinates, the two sets of curves, one heat map (one α x β grid).
    for div in ("fig-parcoords", "fig-curves-epoch", "fig-curves-time", "fig-heatmap-0"):
        assert f'id="{div}"' in page
    assert '"ticktext":["full","static","dynamic"]' in page  # policy as integers with its names
    assert "resample type I" in page and "resample type II" in page and "triangle-up" in page
    # The report's tables, as `dyntrain report` shows them.
    for cell in tables.show_policies(tables.policy_table(df)).to_numpy().ravel():
        assert f"<td>{cell}</td>" in page
    assert "95% CI (±)" in page and "Time to accuracy" in page
    assert "2.99.0-test" in page and "device_name" in page  # the environment of summary.json


def test_live_page_reloads_and_says_how_far_it_is(train_runs, tmp_path):
    df = tables.load(train_runs)
    page = dpage.write_html(df, tmp_path / "live.html", live=True, refresh_s=7, title="a <live> page").read_text()
    assert REFRESH.search(page)[1] == "7"
    assert re.fullmatch(r"live: updated \d\d:\d\d:\d\d, 11 of 12 trials finished", STATE.search(page)[1])
    assert "<title>a &lt;live&gt; page</title>" in page
    assert Rows(page).rows[str(train_runs / "random_running")]["shown_status"] == "running"


def test_page_without_finished_runs(tmp_path):
    for seed in (0, 1):
        write_train_run(tmp_path / "runs" / f"r{seed}", finished=False, epochs_done=1, policy="dynamic", alpha=100, seed=seed)
    page = dpage.write_html(tmp_path / "runs", tmp_path / "report.html", live=True).read_text()
    assert "0 of 2 trials finished" in page and "no finished runs yet" in page and "could not be drawn" not in page
    assert 'id="fig-parcoords"' in page and 'id="fig-curves-epoch"' in page  # running trials are plotted already


def test_write_is_atomic(train_runs, tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    out.write_text("the old page")

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(dpage, "render", broken)
    with pytest.raises(RuntimeError):
        dpage.write_html(train_runs, out)
    assert out.read_text() == "the old page" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    monkeypatch.undo()
    dpage.write_html(train_runs, out)
    assert out.read_text().startswith("<!DOCTYPE html>") and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_html_table(train_runs):
    df = tables.load(train_runs)
    fragment = dpage.html_table(tables.show_grid(tables.grid_table(df)), "grid")
    assert fragment.startswith('<div class="scroll"><table class="report-table grid">')
    assert fragment.count("<tr>") == 3 and "α \\ β" in fragment  # a header row and α = 200, 100
    assert len(re.findall(r"<td>\d+\.\d ± \d+\.\d</td>", fragment)) == 4  # mean ± std over 2 seeds in each cell


# ---------------------------------------------------------------- LiveReport (quick, stand-in trials)

def fake_trial(trial_id: str, folder: Path, status: str = "PENDING", **config) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, config={"epochs": 3, **config},
                           path=str(folder / trial_id), local_path=None)


def report_of(callback, trials, trial, row, **extra) -> None:
    """What Tune hands the callback for one epoch: the metrics plus Tune's own entries."""
    callback.on_trial_result(iteration=0, trials=trials, trial=trial, result={
        **row, **extra, "training_iteration": row["epoch"], "config": trial.config, "done": False})


def test_live_report_with_stand_in_trials(tmp_path, caplog):
    from dyntrain.live import LiveReport

    exp = tmp_path / "exp"
    exp.mkdir()
    a = fake_trial("t_00000", exp, policy="dynamic", alpha=100, beta=0.1)
    b = fake_trial("t_00001", exp, policy="dynamic", alpha=100, beta=0.5)
    trials = [a, b]
    # b was restored: its first epoch is in its result.json already, the callback never saw it.
    Path(b.path).mkdir()
    Path(b.path, "result.json").write_text(json.dumps(epochs_of(b.config)[0]) + "\n{half a line")
    live = LiveReport(exp, every_s=3600)
    live.on_step_end(iteration=0, trials=trials)
    live._thread.join()
    page = (exp / "report.html").read_text()
    assert REFRESH.search(page)[1] == "3600" and "0 of 2 trials finished" in page
    assert {r["shown_status"] for r in Rows(page).rows.values()} == {"pending", "running"}  # b has an epoch

    a.status = b.status = "RUNNING"
    for row in epochs_of(a.config):  # a trial of dyntrain.tune also says where it ran and its GPU-seconds
        report_of(live, trials, a, row, node_ip="10.0.0.7", gpu_ids="0", gpu_s=2 * row["wall_time_s"])
    live.on_step_end(iteration=1, trials=trials)
    assert live.renders == 1  # within every_s: no second page
    live.every_s = 0
    report_of(live, trials, b, epochs_of(b.config)[1])
    live._thread.join()
    rows = Rows((exp / "report.html").read_text()).rows
    assert rows["exp/t_00000"]["epochs_done"] == "3/3" and rows["exp/t_00001"]["epochs_done"] == "2/3"
    assert rows["exp/t_00001"]["best_val_acc"] == pct(epochs_of(b.config)[1]["best_val_acc"])
    assert rows["exp/t_00000"]["where"] == "10.0.0.7 GPU 0" and rows["exp/t_00001"]["where"] == "—"
    assert rows["exp/t_00000"]["gpu_s"] == f"{2 * epochs_of(a.config)[-1]['wall_time_s']:,.1f}" and rows["exp/t_00001"]["gpu_s"] == "—"

    live.on_trial_complete(iteration=2, trials=trials, trial=a)  # Tune sets TERMINATED after this hook
    live.on_experiment_end(trials=trials)
    page = (exp / "report.html").read_text()
    assert not REFRESH.search(page) and "1 of 2 trials finished" in page
    assert Rows(page).rows["exp/t_00000"]["shown_status"] == "finished"
    assert pickle.loads(pickle.dumps(live)).every_s == 0  # Tune pickles its callbacks into tuner.pkl

    # A page that cannot be written: one warning, nothing raised into Tune.
    broken = LiveReport(exp, every_s=0, out_file=exp / "report.html" / "nested.html")
    with caplog.at_level(logging.WARNING, logger="dyntrain.live"):
        for row in epochs_of(a.config):
            report_of(broken, trials, a, row)
            broken._thread.join()
        broken.on_experiment_end(trials=trials)
    assert len([r for r in caplog.records if "could not write the live report" in r.getMessage()]) == 1


# ---------------------------------------------------------------- a real search, watched, then opened in Chromium

SPACE = {"policy": ["full", "dynamic"], "alpha": 60, "beta": [0.2, 0.5], "delta": 0.5}  # 4 trials
TUNE_ARGS = ["--train-limit", "120", "--test-limit", "50", "--val-size", "30", "--epochs", "2", "--batch-size", "32",
             "--batchnorm", "--gpus-per-trial", "0", "--no-progress", "--live-report-s", "1"]


def dyntrain_command() -> list[str]:
    script = Path(sys.executable).with_name("dyntrain")
    return [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from dyntrain.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def watched_search(tiny_folder, tmp_path_factory):
    """`dyntrain tune` of SPACE on tiny data, its report.html read whenever it changes while the
    command runs: (experiment folder, [(seconds since start, page)], seconds at the command's end)."""
    root = tmp_path_factory.mktemp("tune")
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    exp = root / "store" / "exp"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray, on 127.0.0.1
    cmd = [*dyntrain_command(), "tune", "--space", str(root / "space.yaml"), "--dataset", f"folder:{tiny_folder}",
           "--data-dir", str(root / "data"), *TUNE_ARGS, "--storage", str(root / "store"), "--name", "exp"]
    start = time.monotonic()
    with open(root / "tune.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        pages, seen = [], None
        try:
            while True:
                running = proc.poll() is None
                try:
                    stamp = (exp / "report.html").stat().st_mtime_ns
                except FileNotFoundError:
                    stamp = None
                if stamp is not None and stamp != seen:
                    seen = stamp
                    pages.append((time.monotonic() - start, (exp / "report.html").read_text()))
                if not running:
                    break
                if time.monotonic() - start > 500:
                    raise TimeoutError("dyntrain tune took over 500 s")
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ended = time.monotonic() - start
    assert proc.returncode == 0, (root / "tune.log").read_text()[-4000:]
    return exp, pages, ended


@pytest.mark.slow
def test_live_page_while_a_real_search_runs(watched_search):
    exp, pages, ended = watched_search
    trials = sorted(p.parent.name for p in exp.glob("*/params.json"))
    assert len(trials) == 4
    live = [(t, page) for t, page in pages if REFRESH.search(page)]
    assert live and live[0][0] < ended, "no live page before the search ended"
    running = [page for _, page in live if "running" in {r["shown_status"] for r in Rows(page).rows.values()}]
    assert running, "no live page showed a running trial"
    assert REFRESH.search(running[0])[1] == "1"
    assert re.fullmatch(r"live: updated \d\d:\d\d:\d\d, [0-3] of 4 trials finished", STATE.search(running[0])[1])
    assert {r["shown_status"] for r in Rows(running[0]).rows.values()} <= {"running", "pending", "finished"}

    final = (exp / "report.html").read_text()
    assert pages[-1][1] == final and not REFRESH.search(final)
    assert re.fullmatch(r"updated \S+ \S+, 4 of 4 trials finished", STATE.search(final)[1])
    rows = Rows(final).rows
    assert len(rows) == 4 and {r["shown_status"] for r in rows.values()} == {"finished"}
    assert set(rows) == {"exp/" + "_".join(folder.split("_")[1:3]) for folder in trials}  # trainable_<id>_<n>_...


@pytest.fixture
def chromium():
    """A browser context in the system's headless Chromium, driven by Playwright (which downloads no
    browser of its own here: `executable_path`), its viewport 1400 x 1000."""
    exe = os.environ.get("DYNTRAIN_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")) if p), None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if exe is None or sync_playwright is None:
        needs = [*(["Chromium (Debian: apt-get install chromium; or set DYNTRAIN_CHROMIUM to a Chrome/Chromium "
                    "binary)"] if exe is None else []),
                 *(["Playwright (pip install -e '.[test]')"] if sync_playwright is None else [])]
        reason = f"NO BROWSER: the report.html browser test needs {' and '.join(needs)}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=[
            "--disable-extensions",
            "--enable-unsafe-swiftshader", "--use-angle=swiftshader"])  # WebGL (parallel coordinates) on the CPU
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(60_000)
            yield context
        finally:
            browser.close()


FIGURES_DRAWN = ("() => document.querySelectorAll('.js-plotly-plot .main-svg').length > 0 && "
                 "Array.from(document.querySelectorAll('.plotly-graph-div')).every(d => d.querySelector('.main-svg'))")
NEXT_FRAME = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"  # laid out and painted


@pytest.mark.slow
def test_report_page_in_a_real_browser(watched_search, chromium, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect


    exp, _, _ = watched_search
    page_file = exp / "report.html"  # LiveReport's final page; write_html of the finished experiment must agree
    rewritten = dpage.write_html(exp, tmp_path / "report.html").read_text()
    assert Rows(rewritten).rows == Rows(page_file.read_text()).rows
    assert_self_contained(page_file.read_text())
    write_report(exp, tmp_path / "tables", formats=("csv",), with_figures=False)  # `dyntrain report`'s runs.csv
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv", index_col=0)
    assert len(runs) == 4

    requests, errors = [], []  # every request of the context (its pages, workers), from before the first
    chromium.on("request", lambda r: requests.append(r.url))
    tab = chromium.new_page()
    tab.on("websocket", lambda ws: requests.append(ws.url))
    tab.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    tab.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type in ("error", "assert") else None)
    url = page_file.as_uri()
    tab.goto(url, wait_until="load")

    n_figures = page_file.read_text().count('class="plotly-graph-div"')
    assert n_figures == 4  # parallel coordinates, two sets of curves, the α x β heat map
    tab.wait_for_function(FIGURES_DRAWN)  # polled every animation frame; fails after 60 s: plotly did not draw

    # Every trial and its numbers, as the rendered DOM holds them.
    dom = dict(tab.evaluate("""() => Array.from(document.querySelectorAll('#trial-table tbody tr')).map(tr =>
        [tr.dataset.run, Object.fromEntries(Array.from(tr.cells).map(td => [td.dataset.col, td.textContent.trim()]))])"""))
    assert set(dom) == set(runs.index)
    for run, r in runs.iterrows():
        assert dom[run]["shown_status"] == "finished" and dom[run]["setting"] == r.setting
        assert dom[run]["name"] == run.split("/", 1)[1]
        assert dom[run]["policy"] == r.policy
        assert dom[run]["beta"] == (f"{r.beta:g}" if r.policy == "dynamic" else "·")
        for col, text in expected_cells(r).items():
            assert dom[run][col] == text, (run, col)
        assert dom[run]["where"].startswith(str(r.node_ip))

    # Sort by best validation accuracy (twice: descending), then filter.
    head = tab.locator('#trial-table th[data-col="best_val_acc"]')
    head.locator("button").click()
    head.locator("button").click()
    expect(head).to_have_attribute("aria-sort", "descending")
    keys = tab.evaluate("() => Array.from(document.querySelectorAll('#trial-table tbody td[data-col=\"best_val_acc\"]'))"
                        ".map(td => parseFloat(td.dataset.sort))")
    assert keys == sorted(keys, reverse=True) and len(keys) == 4
    tab.locator("#filter").fill("dynamic β=0.5")  # types it: an input event
    expect(tab.locator("#trial-table tbody tr:not([hidden])")).to_have_count(1)
    expect(tab.locator("#shown")).to_have_text("1 of 4 trials")
    assert tab.locator("#shown").text_content() == "1 of 4 trials"
    assert "4 of 4 trials finished" in tab.locator("#state").text_content()
    assert "environment" in tab.locator("#environment").text_content().lower()
    assert "ray" in tab.locator("#environment table.env").first.text_content()

    # The whole page in one shot: the viewport grown to its height, once the figures are redrawn at that
    # size (plotly's own resize, awaited for every figure after the window's resize event) and painted.
    height = min(tab.evaluate("Math.ceil(document.documentElement.scrollHeight)"), 12000)
    tab.set_viewport_size({"width": 1400, "height": height})
    tab.wait_for_function("h => window.innerHeight === h", arg=height)
    tab.evaluate(NEXT_FRAME)  # the resize event is dispatched before the frame's callbacks
    tab.evaluate("() => Promise.all(Array.from(document.querySelectorAll('.js-plotly-plot'), d => Plotly.Plots.resize(d)))")
    tab.evaluate(NEXT_FRAME)
    shot = tab.screenshot(type="png", path=tmp_path / "report.png")
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000

    # Nothing left the page: one request, for the page itself (data: and blob: URLs stay inside it) ...
    try:
        tab.wait_for_load_state("networkidle", timeout=15_000)  # no request in flight for 500 ms after the load event
        in_flight = False
    except PlaywrightTimeout:  # a request that never ends (one the page's CSP blocked, say): it is in `requests`
        in_flight = True
    assert tab.evaluate(FIGURES_DRAWN) is True  # still drawn after the resize
    outside = [u for u in requests if u != url and not u.startswith(("data:", "blob:"))]
    assert requests.count(url) == 1 and not outside, outside
    assert not in_flight, "requests still in flight 15 s after the page was drawn"
    # ... and nothing went wrong in it.
    assert not errors, json.dumps(errors)[:3000]
