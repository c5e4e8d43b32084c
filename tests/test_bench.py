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
    for r in (full, dynamic):  # one checkpoint write, timed beside the epoch
        assert r["checkpoint_s"] > 0 and r["checkpoint_bytes"] > 1e6
    out = capsys.readouterr().out
    assert "x plain" in out and "checkpoint" in out and "of an epoch" in out


def test_a_failing_mode_is_recorded_and_the_rest_kept(tiny_folder, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--dataset", f"folder:{tiny_folder}", "--data-dir", str(tmp_path / "d"), "--train-limit", "64",
            "--test-limit", "32", "--epochs", "1", "--plain-epochs", "1", "--workers", "0", "--batch-size", "32",
            "--device", "cpu", "--policies", "full", "--out", str(out)]
    assert cli.main([*args, "--compile", "cudagraphs,none"]) == 1  # CUDA graphs need CUDA: recorded, not fatal
    plain, graphs, eager = json.loads(out.read_text())["pipelines"]
    assert "cudagraphs" in graphs["pipeline"] and "needs a CUDA device" in graphs["error"]
    assert eager["images_per_s"] > 0 and "error" not in eager
    assert "FAILED" in capsys.readouterr().err
    assert cli.main([*args, "--compile", "turbo"]) == 2  # a typo fails before any work
    assert "compile='turbo' is invalid" in capsys.readouterr().err


def test_check_compares_every_mode_with_the_fp32_reference(tiny_folder, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--dataset", f"folder:{tiny_folder}", "--data-dir", str(tmp_path / "d"), "--train-limit", "128",
                     "--test-limit", "32", "--epochs", "1", "--plain-epochs", "1", "--workers", "0", "--batch-size", "32",
                     "--device", "cpu", "--policies", "full", "--compile", "none,cudagraphs", "--check-steps", "50",
                     "--out", str(out)])
    assert code == 1  # cudagraphs cannot run on the CPU
    check = json.loads(out.read_text())["check"]
    assert check["steps"] == 4 == len(check["reference_losses"])  # 128 images / batch 32: capped at one pass
    none = check["modes"]["none"]
    # On the CPU the engine computes in fp32 eagerly: the same losses as the reference, to the bit.
    assert none["ok"] is True and none["same_init"] and none["rel_diff_max"] == 0.0  # JSON booleans
    assert none["losses"] == check["reference_losses"]
    assert check["modes"]["cudagraphs"]["ok"] is False and "needs a CUDA device" in check["modes"]["cudagraphs"]["error"]
    printed = capsys.readouterr().out
    assert "check: compile none against fp32 eager over 4 steps: ok" in printed
    assert "check: compile cudagraphs against fp32 eager over 4 steps: FAILED" in printed


def test_bench_takes_the_model_option(tiny_folder, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--model", "user_models:small_cnn", "--dataset", f"folder:{tiny_folder}", "--data-dir",
                     str(tmp_path / "d"), "--train-limit", "64", "--test-limit", "32", "--epochs", "1", "--plain-epochs",
                     "1", "--workers", "0", "--batch-size", "32", "--device", "cpu", "--policies", "full", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["model"] == "user_models:small_cnn" and len(result["pipelines"]) == 2
    assert result["pipelines"][1]["checkpoint_bytes"] < 1e5  # the small network's checkpoint, not the paper's 13 MB
    assert "model user_models:small_cnn" in capsys.readouterr().out
