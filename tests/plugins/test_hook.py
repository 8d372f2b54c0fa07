"""The entry-point hook (plugins/moca_plugins/_hook.py), end to end in fresh interpreters.

Each test runs this environment's Python with a stand-in vidore_benchmark / mteb package and a fake plug-in
distribution first on PYTHONPATH: the hook's mechanics are exercised without the real harnesses' 8 s
import, and with plug-ins that are good, broken or not classes. The real CLIs are covered by
tests/moca_bench/test_vidore_cli.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FILES = {
    "vidore_benchmark/__init__.py": "from . import retrievers  # like the real package\n",
    "vidore_benchmark/retrievers/__init__.py": (
        "from .base_vision_retriever import BaseVisionRetriever\n"
        "from .registry_utils import VISION_RETRIEVER_REGISTRY\n"
    ),
    "vidore_benchmark/retrievers/registry_utils.py": "VISION_RETRIEVER_REGISTRY = {'builtin': object}\n",
    "vidore_benchmark/retrievers/base_vision_retriever.py": (
        "class BaseVisionRetriever:\n    def __init__(self, use_visual_embedding):\n        pass\n"
    ),
    "mteb/__init__.py": "",
    "mteb/models/__init__.py": "",
    "mteb/models/model_implementations/__init__.py": "MODEL_REGISTRY = {'builtin/model': 'builtin'}\n",
    "fakeplug.py": textwrap.dedent(
        """
        class Good:
            pass

        class Meta:
            def __init__(self, name):
                self.name = name

        VALUE = 3
        single = Meta("fake/single")

        def metas():
            return [Meta("fake/a"), Meta("fake/b")]
        """
    ),
    "fakeplug-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n",
    "fakeplug-0.1.dist-info/entry_points.txt": textwrap.dedent(
        """
        [vidore_benchmark.retrievers]
        good = fakeplug:Good
        broken = fakeplug_missing:Nope
        notaclass = fakeplug:VALUE

        [mteb.models]
        fakemetas = fakeplug:metas
        fakesingle = fakeplug:single
        brokenmteb = fakeplug:does_not_exist
        """
    ),
}

REPORT = """
import json, sys
def report(**extra):
    from vidore_benchmark.retrievers.registry_utils import VISION_RETRIEVER_REGISTRY as R
    out = {k: getattr(v, "__qualname__", repr(v)) for k, v in R.items()}
    print(json.dumps({"vidore": out, **extra}))
"""


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake_harness")
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def run_python(fake_root: Path, code: str, *flags: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(fake_root), OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, *flags, "-c", REPORT + textwrap.dedent(code)],
        cwd=fake_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def test_startup_installs_the_finder_and_imports_nothing_heavy(fake_root):
    out, _ = run_python(
        fake_root,
        """
        heavy = sorted(m for m in ("torch", "numpy", "logging", "importlib.metadata", "moca_bench") if m in sys.modules)
        finders = [type(f).__name__ for f in sys.meta_path]
        import moca_plugins._hook as hook
        hook.install(); hook.install()
        print(json.dumps({"heavy": heavy, "hooked": finders.count("_Finder"),
                          "after": [type(f).__name__ for f in sys.meta_path].count("_Finder"),
                          "fakeplug": "fakeplug" in sys.modules}))
        """,
    )
    assert out == {"heavy": [], "hooked": 1, "after": 1, "fakeplug": False}  # idempotent, lazy


def test_registry_gets_every_good_plugin_and_survives_broken_ones(fake_root):
    out, err = run_python(
        fake_root,
        """
        import vidore_benchmark
        from mteb.models.model_implementations import MODEL_REGISTRY as M
        report(mteb=sorted(M))
        """,
    )
    vidore = out["vidore"]
    assert vidore["builtin"] == "object" and vidore["good"] == "Good"
    assert vidore["moca"] == vidore["moca-qwen25"] == "MoCaVidoreRetriever"  # our own entry points
    assert "broken" not in vidore and "notaclass" not in vidore
    assert {"builtin/model", "fake/a", "fake/b", "fake/single"} <= set(out["mteb"])
    assert "plug-in 'broken' of group 'vidore_benchmark.retrievers' failed to load" in err
    assert "plug-in 'brokenmteb' of group 'mteb.models' failed to load" in err
    assert "'moca' of group 'vidore_benchmark.retrievers'" not in err


def test_adapter_imported_before_the_harness_still_registers_without_warning(fake_root):
    out, err = run_python(
        fake_root,
        """
        from moca_bench.vidore import MoCaVidoreRetriever  # imports vidore_benchmark half-way through
        report()
        """,
    )
    assert out["vidore"]["moca"] == out["vidore"]["moca-qwen25"] == "MoCaVidoreRetriever"
    failed = [line for line in err.splitlines() if "failed to load" in line and "'broken'" not in line]
    assert not [line for line in failed if "vidore_benchmark.retrievers" in line]


def test_install_after_the_registry_was_imported_loads_at_once(fake_root):
    plugins = str(Path(__file__).resolve().parents[2] / "plugins")
    out, _ = run_python(
        fake_root,
        f"""
        sys.path.append({plugins!r})  # no site-packages: only the fake plug-in's entry points are visible
        import vidore_benchmark  # no .pth processed (-S): the hook is not installed yet
        from vidore_benchmark.retrievers.registry_utils import VISION_RETRIEVER_REGISTRY as R
        before = "good" in R
        import moca_plugins._hook as hook
        hook.install()
        report(before=before)
        """,
        "-S",
    )
    assert out["before"] is False and out["vidore"]["good"] == "Good"
