"""parse_config: YAML + dotted overrides, type coercion, errors naming the option, --help from docstrings."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from moca_train.checkpoint import CONFIG_FILE, META_FILE, save_resolved_config
from moca_train.cl.config import CLConfig
from moca_train.cli import field_docs, parse_config
from moca_train.config import TrainConfig


def _yaml(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


BASE = {"model": {"init_from": "some/dir"}, "data": {"datasets": [{"name": "a", "path": "a.jsonl"}]}}


def test_yaml_plus_dotted_overrides(tmp_path):
    cfg = parse_config(
        [
            "--config",
            _yaml(tmp_path, BASE),
            "--train.learning_rate",
            "1e-4",
            "--train.max_steps=7",
            "--data.datasets.0.max_rows",
            "100",
            "--model.lora.target_modules",
            "[q_proj, v_proj]",
            "--train.max_grad_norm",
            "null",
            "--loss.gradcache",
            "false",
        ],
        CLConfig,
    )
    assert cfg.train.learning_rate == 1e-4 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.max_steps == 7 and cfg.data.datasets[0].max_rows == 100
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.max_grad_norm is None and cfg.loss.gradcache is False
    assert cfg.loss.temperature == 0.03  # untouched default


def test_overrides_apply_after_all_files_and_later_files_win(tmp_path):
    second = _yaml(tmp_path, {"train": {"seed": 5, "max_steps": 3}}, "d.yaml")
    cfg = parse_config(["--train.seed", "9", "--config", _yaml(tmp_path, BASE), "--config", second], CLConfig)
    assert cfg.train.seed == 9 and cfg.train.max_steps == 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--train.learnig_rate", "1"], "did you mean --train.learning_rate"),
        (["--train.max_steps", "abc"], "--train.max_steps: expected int"),
        (["--train.max_steps", "0"], "--train.max_steps: must be > 0"),
        (["--train.mixed_precision", "fp16"], "--train.mixed_precision: expected one of"),
        (["--loss.gradcache", "maybe"], "--loss.gradcache: expected true/false"),
        (["--data.datasets.3.path", "x"], "not an index"),
    ],
)
def test_errors_name_the_option(tmp_path, args, needle):
    with pytest.raises(ValueError) as err:
        parse_config(["--config", _yaml(tmp_path, BASE), *args], CLConfig)
    assert needle in str(err.value)


def test_missing_required_section_is_reported():
    with pytest.raises(ValueError, match="--model.init_from"):
        parse_config([], CLConfig)


def test_help_lists_every_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--help"], CLConfig)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    docs = field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        assert f"--train.{f.name} " in out
        assert docs[f.name].split()[0] in out
    assert "--loss.temperature float  (default: 0.03)" in out


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_config(["--config", _yaml(tmp_path, BASE), "--train.seed", "3"], CLConfig)
    save_resolved_config(cfg, tmp_path / "ck")
    again = parse_config(["--config", str(tmp_path / "ck" / CONFIG_FILE)], CLConfig)
    assert again == cfg
    assert (tmp_path / "ck" / META_FILE).read_text().count("commit") == 1


def test_several_config_files_after_one_flag(tmp_path):
    second = _yaml(tmp_path, {"train": {"seed": 5, "max_steps": 3}}, "d.yaml")
    third = _yaml(tmp_path, {"train": {"seed": 6}}, "e.yaml")
    cfg = parse_config(["--config", _yaml(tmp_path, BASE), second, third, "--train.log_every", "2"], CLConfig)
    assert (cfg.train.seed, cfg.train.max_steps, cfg.train.log_every) == (6, 3, 2)


def test_flow_mapping_without_a_space_after_the_colon_is_explained(tmp_path):
    with pytest.raises(ValueError) as err:  # YAML reads {path:/x} as one key "path:/x" without a value
        parse_config(["--config", _yaml(tmp_path, BASE), "--data.datasets", "[{name: a, path:/x}]"], CLConfig)
    assert str(err.value) == ("--data.datasets [{name: a, path:/x}]: YAML read 'path:/x' as one key without a value: "
                              "in {...} flow syntax a colon needs a space after it; write '{path: /x}'")  # fmt: skip
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {init_from:/x}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: YAML read 'init_from:/x' .* write '\{init_from: /x\}'"):
        parse_config(["--config", str(bad)], CLConfig)


def test_unparsable_yaml_names_the_option_and_the_position(tmp_path):
    with pytest.raises(ValueError, match=r"^--train.max_steps \[1: not valid YAML \(line 1, column 3\)"):
        parse_config(["--config", _yaml(tmp_path, BASE), "--train.max_steps", "[1"], CLConfig)


def test_common_flags_are_split_off_but_never_an_options_value():
    from moca_model.console import pop_common_flags

    rest, verbosity, debug = pop_common_flags(["-v", "--config", "a.yaml", "--train.run_name", "-v", "--debug", "-v"])
    assert rest == ["--config", "a.yaml", "--train.run_name", "-v"] and verbosity == 2 and debug
    assert pop_common_flags(["-q", "--x=1"]) == (["--x=1"], -1, False)


def test_stage_main_prints_config_errors_as_one_line(tmp_path, capsys):
    from moca_train.cl.train import main

    rc = main(["--config", _yaml(tmp_path, BASE), "--train.learnig_rate", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "error: --train.learnig_rate: unknown option; did you mean --train.learning_rate?"
    with pytest.raises(ValueError, match="learnig_rate"):
        main(["--config", _yaml(tmp_path, BASE), "--train.learnig_rate", "1", "--debug"])
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --config: no such file {str(tmp_path / 'nope.yaml')!r}"
