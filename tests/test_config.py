"""The config tree: one flag per field, defaults written once, validation, JSON round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from three_regimes_jax.cli import COMMAND_FLAGS, build_parser, config_from_args, main
from three_regimes_jax.config import (
    SECTIONS,
    Config,
    ModelConfig,
    TrainConfig,
    fields_of,
    flat_names,
)
from three_regimes_jax.errors import UserError

V1_SWEEP = Path(__file__).parent / "data" / "v1_sweep"


def _subparser(name: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def _flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}


def test_every_sweep_field_has_a_flag_and_every_flag_a_field():
    fields = {f.metadata["flag"] for s in SECTIONS if s != "finetune" for f in fields_of(s)}
    flags = _flags(_subparser("sweep"))
    assert fields <= flags
    assert flags - fields <= set(COMMAND_FLAGS)


def test_finetune_and_find_transitions_flags_are_config_fields():
    every = {f.metadata["flag"] for s in SECTIONS for f in fields_of(s)}
    for name in ("finetune", "find-transitions"):
        extra = {"--elr-range", "--rounds", "--points"} if name == "find-transitions" else set()
        assert _flags(_subparser(name)) - every <= set(COMMAND_FLAGS) | extra, name


def test_flat_names_are_unique_and_cover_every_field():
    n_fields = sum(1 for s in SECTIONS for _ in fields_of(s))
    assert len(flat_names()) == n_fields


def test_cli_defaults_are_the_configs_defaults():
    args = build_parser().parse_args(["sweep", "--elrs", "1e-3", "--epochs", "2", "--out", "x"])
    assert config_from_args(args) == Config.from_flat(elrs=(1e-3,), epochs=2)
    assert Config().train.batch_size == 128 and Config().model.hidden == (300, 100)


def test_every_flag_reaches_its_field():
    argv = ["sweep", "--model", "convnet_si", "--width", "8", "--depth", "2", "--hidden", "7,5"]
    argv += ["--init-scale", "3", "--train-last-layer", "--dataset", "mnist", "--data-dir", "d"]
    argv += ["--use-data-size", "100", "--label-noise", "0.2", "--noise-seed", "3"]
    argv += ["--elrs", "1e-3,1e-2", "--seeds", "4,5", "--epochs", "6", "--batch-size", "32"]
    argv += ["--drop-last", "--random-walk", "--sharpness-every", "2", "--sharpness-size", "64"]
    argv += ["--sharpness-probes", "3", "--sharpness-iters", "4", "--checkpoint-epochs", "1,3"]
    argv += ["--checkpoint-every", "2", "--checkpoint-log", "--strategy", "map", "--out", "x"]
    c = config_from_args(build_parser().parse_args(argv))
    assert c.model == ModelConfig("convnet_si", 8, 2, (7, 5), 3.0, True)
    assert (c.data.dataset, c.data.data_dir, c.data.use_data_size) == ("mnist", "d", 100)
    assert (c.data.label_noise, c.data.noise_seed) == (0.2, 3)
    assert c.train == TrainConfig((1e-3, 1e-2), (4, 5), 6, 32, True, True)
    assert (c.measure.sharpness_every, c.measure.sharpness_size) == (2, 64)
    assert (c.measure.sharpness_probes, c.measure.sharpness_iters) == (3, 4)
    assert (c.checkpoint.epochs, c.checkpoint.every, c.checkpoint.log) == ((1, 3), 2, True)
    assert c.run.strategy == "map" and c.finetune is None


def test_json_round_trip_and_replace():
    c = Config.from_flat(model="convnet_si", elrs=(1e-3, 2e-3), seeds=(0, 1), epochs=3)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["format_version"] == 2 and d["kind"] == "sweep" and d["model"]["name"] == "convnet_si"
    assert Config.from_dict(d) == c
    ft = c.replace(source="runs/x", epoch=3, elrs=(1e-4,), epochs=2)
    assert ft.kind == "finetune" and (ft.start_epoch, ft.end_epoch) == (3, 5)
    assert Config.from_dict(json.loads(json.dumps(ft.to_dict()))) == ft
    assert c.member_elrs == [1e-3, 1e-3, 2e-3, 2e-3] and c.member_seeds == [0, 1, 0, 1]


def test_format_1_configs_still_read():
    old = json.loads((V1_SWEEP / "config.json").read_text())
    assert old["format_version"] == 1 and "hidden" in old  # the flat layout
    c = Config.from_dict(old)
    assert c.model.hidden == (8, 4) and c.train.elrs == (0.01, 0.1) and c.train.batch_size == 64
    assert c.checkpoint.epochs == (1,)
    ft = {"kind": "finetune", "format_version": 1, "source": "runs/s", "epoch": 2}
    ft |= {"elrs": [1e-3], "epochs": 3, "members": [], "data_key": "new"}
    ft |= {"sharpness_every": 0, "checkpoint_every": 1, "source_config": old}
    f = Config.from_dict(ft)
    assert f.kind == "finetune" and f.finetune.data_key == "new" and f.model.hidden == (8, 4)
    assert (f.train.elrs, f.end_epoch, f.checkpoint.every, f.checkpoint.epochs) == (
        (1e-3,),
        5,
        1,
        (),
    )


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        (
            {"model": "resnet"},
            "unknown model 'resnet' (--model); choose one of: mlp_si, convnet_si",
        ),
        ({"elrs": (0.0,)}, "every ELR must be a finite number > 0, got 0.0 in --elrs"),
        ({"elrs": (1e-50,)}, "below float32's smallest normal number"),
        ({"elrs": (1e-3, 1e-3)}, "--elrs must not repeat values"),
        ({"elrs": ()}, "--elrs is empty"),
        ({"seeds": (2**70,)}, "--seeds must fit in 64 bits"),
        ({"hidden": ()}, "--hidden is empty"),
        ({"init_scale": float("nan")}, "--init-scale must be a finite number"),
        ({"init_scale": 0.0}, "--init-scale must be >= 1e-30"),
        ({"init_scale": -10.0}, "--init-scale must be >= 1e-30"),
        ({"noise_seed": -1}, "--noise-seed must be >= 0"),
        ({"label_noise": 2.0}, "--label-noise must be <= 1"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"epochs": 2.5}, "--epochs must be an integer"),
        ({"strategy": "fast"}, "unknown strategy 'fast' (--strategy)"),
        (
            {"sharpness_every": 1, "sharpness_size": 8},
            "--sharpness-size (8) must be >= --batch-size",
        ),
        ({"checkpoint_epochs": (11,)}, "checkpoint epoch 11 is outside the run's epochs"),
        ({"widht": 3}, "unknown config field(s): widht"),
    ],
)
def test_bad_values_get_one_line(flat, message):
    with pytest.raises(UserError) as e:
        Config.from_flat(**flat)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_json_configs_get_one_line():
    with pytest.raises(UserError, match="must be a JSON object"):
        Config.from_dict([])
    with pytest.raises(UserError, match="the config is empty"):
        Config.from_dict({})
    with pytest.raises(UserError, match=r"config.model: unknown key\(s\) colour"):
        Config.from_dict({"format_version": 2, "model": {"colour": 1}})
    with pytest.raises(UserError, match="newer than this installation"):
        Config.from_dict({"format_version": 9, "model": {}})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hidden", ""], "--hidden is empty"),
        (["--seeds", "1,,2"], "--seeds must be comma-separated integers, got '1,,2'"),
        (["--epochs", "x"], "argument --epochs: invalid int: 'x'"),
        (["--noise-seed", "-1"], "--noise-seed must be >= 0"),
        (["--init-scale", "nan"], "--init-scale must be a finite number"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(argv, message, tmp_path, capsys):
    base = ["sweep", "--elrs", "1e-3", "--epochs", "1", "--out", str(tmp_path / "o")]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
