"""The mteb hook names $MOCA_MTEB_CHECKPOINTS when ``mteb run -m DIR`` asks for a MoCa folder it does not know."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mteb", minversion="2.0")

from moca_bench.mteb_models import CHECKPOINTS_ENV, model_metas, unregistered_folders  # noqa: E402
from moca_model.loading import MoCaLoadError  # noqa: E402

MTEB = str(Path(sys.executable).parent / "mteb")


def test_an_unregistered_moca_folder_gets_a_hint_and_a_failing_loader(tiny_dir, caplog):
    metas = model_metas({})
    with caplog.at_level(logging.WARNING, logger="moca_bench.mteb_models"):
        (meta,) = unregistered_folders([MTEB, "run", "-m", str(tiny_dir), "-t", "STS12"], metas)
    hint = f"export {CHECKPOINTS_ENV}={tiny_dir.resolve()}"
    assert meta.name == str(tiny_dir) and hint in caplog.text
    with pytest.raises(MoCaLoadError, match=f"is a MoCa checkpoint, but mteb finds .*{hint}"):
        meta.load_model()
    assert unregistered_folders([MTEB, "run", f"--model={tiny_dir}"], metas)  # the --model=DIR spelling


def test_no_hint_when_registered_not_moca_or_not_mteb(tiny_dir, tmp_path):
    registered = model_metas({CHECKPOINTS_ENV: str(tiny_dir)})
    assert unregistered_folders([MTEB, "run", "-m", str(tiny_dir)], registered) == []
    assert unregistered_folders([MTEB, "run", "-m", str(tmp_path)], model_metas({})) == []  # no moca_config.json
    assert unregistered_folders(["/usr/bin/python", "-m", str(tiny_dir)], model_metas({})) == []


@pytest.mark.slow
def test_mteb_run_on_an_unregistered_folder_ends_with_the_hint(tiny_dir, tmp_path):
    (tmp_path / "ckpt").symlink_to(tiny_dir)
    env = {k: v for k, v in os.environ.items() if k != CHECKPOINTS_ENV}
    proc = subprocess.run([MTEB, "run", "-m", "./ckpt", "-t", "STS12", "--output-folder", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("moca_model.loading.MoCaLoadError: './ckpt' is a MoCa checkpoint")
    assert f"export {CHECKPOINTS_ENV}={(tmp_path / 'ckpt').resolve()}" in last
