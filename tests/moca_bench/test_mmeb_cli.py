"""``python -m moca_bench.mmeb``: --help documents every option; main() runs a tiny evaluation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from moca_bench.mmeb.cli import build_parser, main, parse_config
from moca_bench.mmeb.config import MMEBConfig
from moca_bench.mmeb.synthetic import write_sample


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    for action in actions:
        assert action.help and len(action.help) > 10, action.dest
        assert action.option_strings[0] in text
    dests = {a.dest for a in actions}
    fields = {f.name for f in dataclasses.fields(MMEBConfig)}
    assert fields - {"progress"} <= dests  # progress is --no-progress
    assert dests - fields == {"no_progress", "log_level"}


def test_parse_config_maps_options_to_fields():
    cfg, level = parse_config(["--model", "m", "--subsets", "VQA", "CIRR", "--tie-rule", "pessimistic",
                               "--no-progress", "--strict", "--max-rows", "3", "--log-level", "DEBUG"])  # fmt: skip
    assert (cfg.model, cfg.subsets, cfg.tie_rule, cfg.progress, cfg.strict, cfg.max_rows, level) == (
        "m", ["VQA", "CIRR"], "pessimistic", False, True, 3, "DEBUG")  # fmt: skip
    with pytest.raises(SystemExit):
        parse_config(["--model", "m", "--tie-rule", "random"])
    cfg, _ = parse_config(["--model", "m", "--attention", "causal", "--save-rows"])
    assert (cfg.attention, cfg.save_rows) == ("causal", True)
    cfg, _ = parse_config(["--model", "m", "--pooling", "last"])
    assert cfg.pooling == "last"
    with pytest.raises(SystemExit):
        parse_config(["--model", "m", "--pooling", "cls"])
    with pytest.raises(SystemExit):
        parse_config(["--model", "m", "--attention", "sideways"])
    with pytest.raises(ValueError, match="batch_size"):
        parse_config(["--model", "m", "--batch-size", "0"])


def test_main_writes_json_and_markdown(tiny_dir, tmp_path):
    data = write_sample(tmp_path / "data", subsets=("OK-VQA", "RefCOCO"), rows=4)
    out = tmp_path / "results"
    code = main(["--model", str(tiny_dir), "--data-dir", str(data), "--subsets", "OK-VQA", "RefCOCO", "--device", "cpu",
                 "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                 "--max-rows", "3"])  # fmt: skip
    assert code == 0
    report = json.loads((out / tiny_dir.name / "mmeb.json").read_text())
    assert list(report["datasets"]) == ["OK-VQA", "RefCOCO"]
    assert report["data"]["max_rows"] == 3 and report["totals"]["rows"] == 6
    assert report["versions"]["torch"] and report["timings"]["total_s"] > 0
    md = (out / tiny_dir.name / "mmeb.md").read_text()
    assert "| OK-VQA | VQA | IND |" in md and "MoCa-7B (paper)" in md
    assert "| 40.0 | 36.9 |" in md  # OK-VQA's published 3B / 7B numbers
    assert not (out / tiny_dir.name / "rows.json").exists()  # only with --save-rows


def test_attention_and_per_row_hits(tiny_dir, tmp_path):
    data = write_sample(tmp_path / "data", subsets=("OK-VQA",), rows=4)
    out = tmp_path / "results"
    args = ["--model", str(tiny_dir), "--data-dir", str(data), "--subsets", "OK-VQA", "--device", "cpu",
            "--output-dir", str(out), "--no-cache", "--no-progress", "--save-rows"]  # fmt: skip
    assert main([*args, "--model-name", "bi"]) == 0
    assert main([*args, "--model-name", "causal", "--attention", "causal"]) == 0
    reports = {m: json.loads((out / m / "mmeb.json").read_text()) for m in ("bi", "causal")}
    assert reports["bi"]["model"]["settings"]["bidirectional"] is True
    assert reports["causal"]["model"]["settings"]["bidirectional"] is False
    assert reports["bi"]["model"]["cache_key"] != reports["causal"]["model"]["cache_key"]
    rows = json.loads((out / "bi" / "rows.json").read_text())["subsets"]["OK-VQA"]
    assert len(rows) == 4 and set(rows) <= {0.0, 1.0}
    assert 100.0 * sum(rows) / len(rows) == pytest.approx(reports["bi"]["datasets"]["OK-VQA"]["score"])
