"""The export on a checkpoint that moca_train writes (a few CL steps of configs/cl/tiny.yaml).

Training needs the train extras (.venv, transformers 4.57) and the export needs sentence-transformers 6.2
(.venv-mteb), so this test runs in .venv-mteb and trains with .venv's interpreter, the way `make demo`
crosses the two environments. It skips when either side is missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import draw_image, st_export_ready

ROOT = Path(__file__).resolve().parents[2]
TRAIN_PYTHON = ROOT / ".venv" / "bin" / "python"


def _ready() -> str | None:
    if not st_export_ready():
        return "the export needs sentence-transformers>=6.2, transformers>=5.2"
    if not TRAIN_PYTHON.is_file():
        return f"no training interpreter at {TRAIN_PYTHON}"
    if subprocess.run([str(TRAIN_PYTHON), "-c", "import accelerate"], capture_output=True).returncode:
        return f"{TRAIN_PYTHON} lacks accelerate (train extras)"
    return None


pytestmark = [
    pytest.mark.skipif(_ready() is not None, reason=str(_ready())),
    pytest.mark.slow,  # ~45 s: three interpreter start-ups of the training environment
]


def _run(*args: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(TRAIN_PYTHON), "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(initial checkpoint, checkpoint after 3 CL steps), both written by .venv (transformers 4.57)."""
    tmp = tmp_path_factory.mktemp("trained")
    _run("moca_model.tiny", str(tmp / "init"), cwd=ROOT)
    _run("moca_train.cl.synthetic", str(tmp / "world"), "--rows-per-task", "32", cwd=ROOT)
    _run("moca_train.cl", "--config", "configs/cl/tiny.yaml", "--model.init_from", str(tmp / "init"),
         "--train.output_dir", str(tmp / "run"), "--train.max_steps", "3", "--data.global_batch_size", "8",
         "--data.datasets.0.path", str(tmp / "world" / "shapes_i2t.jsonl"),
         "--data.datasets.1.path", str(tmp / "world" / "shapes_t2i.jsonl"), "--train.progress_bar", "false",
         cwd=ROOT)  # fmt: skip
    return tmp / "init", tmp / "run" / "checkpoint-3"


def test_trained_checkpoint_parity(trained, tmp_path):
    from sentence_transformers import SentenceTransformer

    from moca_model import MoCaEncoder
    from moca_model.export_st import export_checkpoint
    from moca_model.st.layout import image_prompts
    from moca_model.st.verify import as_moca_item

    init, ckpt = trained
    folder = export_checkpoint(ckpt, tmp_path / "st")
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    items = ["a red circle on the left", draw_image(90, 120, 3), {"image": draw_image(64, 64, 7), "text": "what?"}]
    only = image_prompts(model.prompts)  # document / image prompts leave a text-only input raw
    for prompt_name in (None, "document", "image_question"):
        prompt = model.prompts.get(prompt_name) if prompt_name else None
        want = MoCaEncoder.from_pretrained(ckpt, device="cpu").encode([as_moca_item(x, prompt, only) for x in items])
        np.testing.assert_allclose(model.encode(items, prompt_name=prompt_name), want, atol=1e-5, rtol=0)
    before = MoCaEncoder.from_pretrained(init, device="cpu").encode([as_moca_item(x, None) for x in items])
    assert np.abs(model.encode(items) - before).max() > 1e-4  # the trained weights were exported, not the init
