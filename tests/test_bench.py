"""`dyntrain bench` runs on the CPU with tiny sizes and writes both pipelines' numbers."""

import json

from dyntrain import cli


def test_bench_compares_plain_pipeline_and_engine(tiny_folder, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--dataset", f"folder:{tiny_folder}", "--data-dir", str(tmp_path / "d"), "--train-limit", "128",
                     "--test-limit", "64", "--epochs", "2", "--plain-epochs", "2", "--workers", "0", "--batch-size", "64",
                     "--device", "cpu", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    plain, full, dynamic = result["pipelines"]
    assert plain["pipeline"].startswith("plain DataLoader") and plain["images_per_epoch"] == 128
    assert full["images_per_epoch"] == 128 and dynamic["images_per_epoch"] == 64
    for r in (plain, full, dynamic):
        assert r["images_per_s"] > 0 and len(r["epoch_times_s"]) == 2
        assert r["images_per_s"] == r["images_per_epoch"] / r["epoch_times_s"][1]
    assert full["speedup_vs_plain"] == full["images_per_s"] / plain["images_per_s"]
    assert result["environment"]["torch"]
    assert "x plain" in capsys.readouterr().out
