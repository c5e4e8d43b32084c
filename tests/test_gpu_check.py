"""benchmarks/gpu_check.sh --smoke end to end on the CPU: every step writes what it promises, and a
second call continued from the first call's tarball skips everything and runs no command again."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("bench", "parity", "bench_resnet18", "fractional", "baselines", "grid")


def launch(out: Path, work: Path, tmp: Path, tar: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "CIFAR_TAR": str(tar), "DATA_DIR": str(tmp / "data"),
           "GPU_CHECK_WORK": str(work), "GPU_CHECK_PREV": ""}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", str(out), "--smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=800)


@pytest.mark.slow
def test_smoke_check_writes_every_step_and_continues(tiny_folder, tmp_path):
    tar = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tiny_folder, arcname="cifar10-jpeg")
    out = tmp_path / "out1"
    first = launch(out, tmp_path / "work1", tmp_path, tar)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    assert sorted(p.name for p in out.iterdir()) == ["env.json", "gpu-check.tar.gz", "log.txt", "progress.json"]
    env = json.loads((out / "env.json").read_text())
    assert env["environment"]["device"] == "cpu" and env["environment"]["device_name"]
    assert env["device_slug"] == "cpu-smoke" and env["pip_freeze"]
    progress = json.loads((out / "progress.json").read_text())
    assert {s: progress["steps"][s]["status"] for s in ("env", *STEPS)} == dict.fromkeys(("env", *STEPS), "done")
    assert progress["steps"]["bench"]["check"] == {"none": "ok", "cudagraphs": "expected failure"}
    assert progress["steps"]["bench"]["best_mode"] == "none"  # the only correct mode on the CPU
    parity = progress["steps"]["parity"]  # the CPU against itself: identical decisions, epoch by epoch
    assert set(parity["modes"]) == {"cpu", "none"} and parity["different_from_cpu"] == []
    assert parity["modes"]["none"]["resamples"] == parity["modes"]["cpu"]["resamples"]
    assert len(parity["modes"]["cpu"]["val_acc"]) == 3

    unpacked = tmp_path / "unpacked"
    with tarfile.open(out / "gpu-check.tar.gz") as tf:
        names = tf.getnames()
        tf.extractall(unpacked, filter="data")
    assert not [n for n in names if n.endswith("checkpoint.pt")]
    root = unpacked / "gpu-check"
    bench = json.loads((root / "results/bench/cpu-smoke.json").read_text())
    assert bench["check"]["modes"]["none"]["ok"] is True
    assert bench["check"]["modes"]["cudagraphs"]["ok"] is False and "CPU" in bench["check"]["modes"]["cudagraphs"]["error"]
    assert any(p["pipeline"].startswith("dyntrain engine") and p["images_per_s"] > 0 for p in bench["pipelines"] if "error" not in p)

    report = root / "results/gpu-cpu-smoke"
    with open(report / "baselines/policies.csv") as fh:
        arms = {row["setting"].split(" α")[0] for row in csv.DictReader(fh)}
    assert arms == {"full", "full (equal images)", "static", "dynamic", "variant", "random"}
    assert (report / "baselines/report.md").is_file() and (report / "baselines/report.html").is_file()
    assert len(list((root / "runs/baselines").glob("*/summary.json"))) == 6
    with open(report / "paper-grid/grid_best_val_acc.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 1  # one alpha: a row, two betas: its columns
    assert (report / "paper-grid/report.md").is_file()
    fractional = json.loads((report / "fractional.json").read_text())
    assert fractional["concurrent_runs"] == 2 and fractional["concurrent_images_per_s"] > 0

    out2 = tmp_path / "out2"
    second = launch(out2, tmp_path / "work2", tmp_path, tar, "--continue-from", str(out / "gpu-check.tar.gz"))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    progress2 = json.loads((out2 / "progress.json").read_text())
    assert [c["commands"] for c in progress2["calls"]] == [progress["calls"][0]["commands"], 0]
    assert all(progress2["steps"][s]["status"] == "done" for s in STEPS)
    log = (out2 / "log.txt").read_text()
    assert all(f"step {s}: done in an earlier call; skipped" in log for s in STEPS)
    assert "run runs/" not in log
