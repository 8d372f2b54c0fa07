"""House rule 1: dependencies point one way, and importing moca_model pulls in no harness or training deps."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "moca_model": (
        "moca_bench",
        "moca_train",
        "moca_plugins",
        "mteb",
        "vidore_benchmark",
        "datasets",
        "peft",
        "accelerate",
    ),
    "moca_bench": ("moca_train",),
    "moca_train": ("moca_bench", "moca_plugins"),
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_packages_import_only_downstream():
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            bad += [f"{path.relative_to(ROOT)}: {m}" for m in _imports(path) if m.split(".")[0] in forbidden]
    assert not bad, bad


HEAVY = (
    "('mteb', 'vidore_benchmark', 'datasets', 'peft', 'moca_train', 'moca_bench', 'torch', 'transformers', "
    "'sentence_transformers')"
)


def _loaded_after(statement: str) -> list[str]:
    loaded = "{m.split('.')[0] for m in sys.modules}"
    code = f"import sys, json; {statement}; print(json.dumps(sorted({loaded} & set({HEAVY}))))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_moca_model_is_light():
    assert _loaded_after("import moca_model") == []  # lazy: not even torch


def test_encoder_import_pulls_no_harness_or_training_deps():
    # accelerate is not listed: transformers itself imports it when installed
    assert _loaded_after("from moca_model import MoCaEncoder") == ["torch", "transformers"]


def test_export_module_imports_its_stack_lazily():
    # python -m moca_model.export_st --help must work, and fail clearly, where sentence-transformers is absent
    assert _loaded_after("import moca_model.export_st") == []
