"""config.py is the single source of truth: options, defaults, help, choices and the policy list."""

from __future__ import annotations

import dataclasses

import pytest

from dyntrain import cli, runs, sampling, spaces, tables
from dyntrain.config import FIELDS, RESUMABLE_CHANGES, RUNTIME, ConfigError, TrainConfig


def train_parser_help(capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    return capsys.readouterr().out


def test_every_field_is_an_option_with_its_default_and_help(capsys):
    text = "".join(train_parser_help(capsys).split())  # argparse wraps lines anywhere, hyphens too
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert "".join(f"{f.metadata['help']} [{f.default}]".split()) in text, f.name
    assert FIELDS["train_limit"] is int and FIELDS["time_budget_s"] is float and FIELDS["augment"] is bool


def test_every_sampling_policy_is_a_choice_everywhere(capsys, tmp_path):
    """Adding a policy class to sampling.POLICIES is enough: the command line, the config validation,
    the built-in baselines space and the report all take it from there."""
    names = list(sampling.POLICIES)
    assert names == ["full", "static", "dynamic", "variant", "random"]
    assert "{" + ",".join(names) + "}" in train_parser_help(capsys)
    for name in names:
        TrainConfig(policy=name).validate()
    with pytest.raises(ConfigError, match="policy='greedy' is invalid: must be one of " + ", ".join(names)):
        TrainConfig(policy="greedy").validate()
    assert [a["policy"] for a in spaces.BASELINES["arm"]] == [*names, "full"]  # and full at equal images
    assert set(tables.PARAMS) == {p for cls in sampling.POLICIES.values() for p in cls.params}
    for name in names:  # one finished train folder per policy: each is an arm of the policy table
        cfg = TrainConfig(policy=name, alpha=10, epochs=1).to_dict()
        epoch = {"epoch": 1, "val_acc": 0.5, "test_acc_at_best_val": 0.5, "wall_time_s": 1.0,
                 "subset_size": 10 if name != "full" else 40, "images_seen": 10, "stopped": "epochs"}
        runs.write_run(tmp_path / name, cfg, [epoch], summary={"config": cfg, "n_train": 40})
    table = tables.policy_table(tables.load(tmp_path))
    assert list(table.policy) == names
    for name in names:  # a policy's own parameters are shown, the others not
        row = table[table.policy == name].iloc[0]
        assert {k for k in tables.PARAMS if row[k] is not None} == set(sampling.POLICIES[name].params)


def test_runtime_fields_change_nothing_computed():
    assert RUNTIME == {"data_dir", "device", "compile", "checkpoint_every", "checkpoint_interval_s", "progress"}
    assert RESUMABLE_CHANGES == RUNTIME | {"epochs"}
    assert not RUNTIME & set(tables.SETTING)


@pytest.mark.parametrize("field, value, message", [
    ("checkpoint_every", 0, "checkpoint_every=0 is invalid: must be an integer >= 1 or unset"),
    ("checkpoint_interval_s", -1.0, "checkpoint_interval_s=-1.0 is invalid: must be a number > 0 or unset"),
])
def test_checkpoint_frequency_is_validated(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TrainConfig(**{field: value}).validate()


def test_tune_help_shows_checkpoint_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["tune", "--help"])
    text = capsys.readouterr().out
    assert "--checkpoint-every" in text and "--checkpoint-interval-s" in text and "--tracker" in text
