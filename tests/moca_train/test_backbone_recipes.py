"""configs/{cpt,cl}/qwen3vl_{2b,4b,8b}.yaml: MoCa's hyper-parameters on Qwen3-VL, parsed and checked field by field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

from moca_train.cl.config import CLConfig  # noqa: E402
from moca_train.cli import parse_config  # noqa: E402
from moca_train.cpt.config import CPTConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Qwen3-VL size -> the MoCa size whose settings it takes (the paper changed only the mask ratios from 3B to 7B)
SIZES = {"2b": "3b", "4b": "3b", "8b": "7b"}
PER_BACKBONE = {"init_from", "backbone", "min_pixels", "max_pixels", "output_dir"}  # everything else is MoCa's


def _flat(cfg, prefix=""):
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize(("stage", "config"), [("cpt", CPTConfig), ("cl", CLConfig)])
def test_qwen3vl_recipes_are_mocas_in_qwen3_units(stage, config, size):
    ours = parse_config(["--config", str(ROOT / f"configs/{stage}/qwen3vl_{size}.yaml")], config)
    moca_size = SIZES[size] if stage == "cpt" else "3b"  # one CL recipe was released (3B)
    moca = parse_config(["--config", str(ROOT / f"configs/{stage}/qwen25vl_{moca_size}.yaml")], config)
    assert ours.model.backbone == "qwen3_vl"
    assert (ours.model.min_pixels, ours.model.max_pixels) == (256 * 32 * 32, 1024 * 32 * 32)  # 256..1024 tokens
    assert (moca.model.min_pixels, moca.model.max_pixels) == (256 * 28 * 28, 1024 * 28 * 28)
    assert f"Qwen3-VL-{size.upper()}" in ours.model.init_from or f"qwen3vl-{size}" in ours.model.init_from
    a, b = _flat(ours), _flat(moca)
    differ = {k for k in a if a[k] != b[k] and k.rsplit(".", 1)[-1] not in PER_BACKBONE}
    assert differ == set(), {k: (a[k], b[k]) for k in differ}
    expected_lr = 2e-6 if stage == "cpt" else 1e-5  # the paper's, for 3B and 7B alike
    assert ours.train.learning_rate == expected_lr
    if stage == "cpt":
        assert (ours.objective.p_text, ours.objective.p_image) == {"3b": (0.4, 0.5), "7b": (0.6, 0.6)}[SIZES[size]]


def test_a_bad_backbone_value_fails_at_parse_time_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"--model.backbone: expected one of .*qwen3_vl.*got .qwen4_vl."):
        parse_config(["--config", str(ROOT / "configs/cl/qwen3vl_4b.yaml"), "--model.backbone", "qwen4_vl"], CLConfig)
    with pytest.raises(ValueError, match="model.pooling"):
        parse_config(["--config", str(ROOT / "configs/cl/qwen3vl_4b.yaml"), "--model.pooling", "cls"], CLConfig)
