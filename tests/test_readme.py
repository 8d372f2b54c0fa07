"""The README's "Use it on your own data" blocks, run as a newcomer runs them: from the repository root, in order.

Each runnable block follows a ``<!-- test: NAME -->`` comment. The blocks run in a fresh git repository
holding this checkout's ``.gitignore`` and ``configs/`` (the files the commands read), with this
environment's ``bin/`` first on PATH (as after ``source .venv/bin/activate``). Afterwards ``git status``
must be clean: every output lands where ``.gitignore`` expects it. Docs that drift from the code fail here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BLOCK = re.compile(r"<!-- test: ([\w-]+) -->\n```(bash|python)\n(.*?)```", re.S)
NAMES = ("embed", "local-beir", "mteb", "training")

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def readme_blocks() -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` of the README's tested blocks."""
    return {name: (lang, code) for name, lang, code in BLOCK.findall((ROOT / "README.md").read_text())}


def without_command(code: str, program: str) -> str:
    """``code`` without the shell command that starts with ``program`` (and its ``\\`` continuation lines)."""
    out, skipping = [], False
    for line in code.splitlines():
        if line.startswith(program):
            skipping = True
        if not skipping:
            out.append(line)
        elif not line.rstrip().endswith("\\"):
            skipping = False
    return "\n".join(out) + "\n"


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git repository standing in for the repository root (its .gitignore and configs/, committed)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    shutil.copytree(ROOT / "configs", repo / "configs")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "root"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    return repo


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCA_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"),
               COLUMNS="200")  # fmt: skip
    return env


def run(repo: Path, env: dict, name: str, code: str | None = None, *, timeout: float = 900) -> str:
    """Run the README block ``name`` (or ``code`` in its language) from ``repo``; returns stdout + stderr."""
    lang, text = readme_blocks()[name]
    text = text if code is None else code
    cmd = ["bash", "-euo", "pipefail", "-c", text] if lang == "bash" else [sys.executable, "-c", text]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"README block {name!r} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def assert_clean(repo: Path) -> None:
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    assert status == "", f"README commands dirtied the checkout:\n{status}"


def test_the_readme_has_every_tested_block():
    blocks = readme_blocks()
    assert tuple(blocks) == NAMES
    assert all(code.strip() for _, code in blocks.values())


def test_embed_block(checkout, tmp_path):
    out = run(checkout, _env(tmp_path), "embed")
    vectors = np.load(checkout / "runs/my-files/vectors.npy")
    assert vectors.shape == (3, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert "1.000" in out and "wrote runs/my-files/vectors.npy with shape (3, 64)" in out
    assert "Traceback" not in out and "warn" not in out.lower()
    assert_clean(checkout)


@pytest.mark.slow
def test_local_beir_and_vidore_block(checkout, tmp_path):
    pytest.importorskip("vidore_benchmark")
    env = _env(tmp_path)
    run(checkout, env, "embed")
    out = run(checkout, env, "local-beir")
    assert re.search(r"nDCG@5 on runs/my-beir: [0-9.]+", out), out[-2000:]
    assert (checkout / "outputs/moca_runs_tiny_metrics.json").is_file()
    run(checkout, env, "local-beir")  # rerunning the block rebuilds the folder it wrote
    assert_clean(checkout)


@pytest.mark.slow
def test_mteb_block(checkout, tmp_path):
    pytest.importorskip("mteb", minversion="2.0")
    env = _env(tmp_path)
    run(checkout, env, "embed")
    run(checkout, env, "local-beir", without_command(readme_blocks()["local-beir"][1], "vidore-benchmark"))
    out = run(checkout, env, "mteb")
    score = re.search(r"^([01]\.\d+|[01])$", out, re.M)  # the block prints the score on its own line
    assert score and 0.0 <= float(score[1]) <= 1.0, out[-2000:]
    assert_clean(checkout)


@pytest.mark.slow
def test_training_block(checkout, tmp_path):
    pytest.importorskip("accelerate")
    env = _env(tmp_path)
    run(checkout, env, "embed")
    out = run(checkout, env, "training")
    assert (checkout / "runs/cpt-tiny/checkpoint-50").is_dir() and (checkout / "runs/cl-tiny/checkpoint-60").is_dir()
    assert np.load(checkout / "runs/my-files/trained.npy").shape == (3, 64)
    assert "Removed shared tensor" not in out and "Traceback" not in out
    again = run(checkout, env, "training")  # the same commands again: every stage is already complete
    assert again.count("nothing to do: already at step") == 2
    assert_clean(checkout)
