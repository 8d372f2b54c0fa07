"""What a result was computed under: the protocol's hash and the code's git state.

Tiny-model training is chaotic: a rounding-level code change moves trained scores like another seed does
(docs/demo.md), so every job records the commit and the hashes of the code trees it ran on, and the study
records the SHA-256 of its pre-registered protocol (docs/demo-protocol.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "docs" / "demo-protocol.md"
CODE_TREES = ("moca_model", "moca_train", "moca_bench", "demo", "configs")
TRAINING_CODE = ("moca_model", "moca_train", "moca_bench", "configs")  # what decides a trained model's numbers
# Settings no job reads from the file: every CL command passes ``--train.learning_rate`` (demo.plan.cl_argv), so
# writing the selected learning rate into the CL recipe (docs/demo-protocol.md §4) changes no trained model.
OVERRIDDEN_LINES = {"configs/cl/demo.yaml": re.compile(r"^\s*learning_rate:")}


def protocol_hash(path: Path = PROTOCOL) -> str | None:
    """SHA-256 of the protocol file's bytes (None when the file is missing)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _git(*args: str, root: Path = ROOT) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict:
    """``{"commit", "code_trees", "dirty"}`` of the checkout (None values outside a git checkout).

    HEAD, the tree hash of each code folder at HEAD, and whether the training code (:data:`TRAINING_CODE`) has
    uncommitted changes.
    """
    commit = _git("rev-parse", "HEAD")
    trees = {name: _git("rev-parse", f"HEAD:{name}") for name in CODE_TREES} if commit else {}
    status = _git("status", "--porcelain", "--", *TRAINING_CODE) if commit else None
    return {"commit": commit, "code_trees": trees, "dirty": bool(status) if status is not None else None}


def trees_at(commit: str) -> dict[str, str | None]:
    """The tree hash of every :data:`TRAINING_CODE` folder at ``commit`` (``abc123`` or ``abc123+dirty``)."""
    base = commit.split("+", 1)[0]
    return {name: _git("rev-parse", f"{base}:{name}") for name in TRAINING_CODE}


def training_code_changes(a: str, b: str, *, root: Path = ROOT) -> list[str] | None:
    """Files of :data:`TRAINING_CODE` that differ between commits ``a`` and ``b`` (``+dirty`` suffixes ignored).

    A file whose changed lines are all settings every job overrides on its command line
    (:data:`OVERRIDDEN_LINES`) is not counted. None when git cannot compare the two commits.
    """
    diff = _git("diff", "--no-color", "--unified=0", a.split("+", 1)[0], b.split("+", 1)[0], "--", *TRAINING_CODE,
                root=root)  # fmt: skip
    if diff is None:
        return None
    changed: dict[str, list[str]] = {}
    current = None
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            current = line.rsplit(" b/", 1)[1]
            changed[current] = []
        elif current and line[:1] in "+-" and not line.startswith(("+++", "---")):
            changed[current].append(line[1:])
    rules = OVERRIDDEN_LINES
    return sorted(f for f, lines in changed.items() if not (f in rules and lines and all(map(rules[f].match, lines))))


def code_id(state: dict) -> str:
    """A short identifier of the code a job ran on: the commit, ``+dirty`` when code was uncommitted."""
    commit = (state.get("commit") or "unknown")[:12]
    return commit + ("+dirty" if state.get("dirty") else "")


def machine() -> dict:
    """Facts that decide floating-point results and speed: CPU, cores, ISA torch uses, threads, versions, load."""
    import platform

    import torch

    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")  # fmt: skip
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = "unknown"
    return {"cpu": model, "logical_cpus": os.cpu_count(), "torch_cpu_capability": capability,
            "torch_threads_per_job": 1, "torch": torch.__version__, "python": platform.python_version(),
            "os": platform.platform(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY")}  # fmt: skip


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
