"""Every mteb task with images, walked through MoCaMTEBEncoder.encode: page corpora get the page layout and
raw queries, the generated table in docs/mteb.md matches the code, and the mmeb option changes what each
family reads."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest

mteb = pytest.importorskip("mteb", minversion="2.0")

from mteb.types import PromptType  # noqa: E402
from PIL import Image  # noqa: E402

from moca_bench.mteb_layouts import all_image_tasks, input_kinds, main, render, splice  # noqa: E402
from moca_bench.mteb_models import MoCaMTEBEncoder, moca_model_meta  # noqa: E402
from moca_bench.prompts import VIDORE_DOCUMENT_PROMPT  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mteb.md"
TASKS = all_image_tasks()
QUERY = "what was the revenue in 2021?"
OCR = "# Annual report\n| year | revenue |"

# The oracle, independent of the adapter's metadata rules: a task holds pages when mteb files it in a
# page benchmark or as DocumentUnderstanding, or when its description and dataset say so (read by hand).
PAGE_BENCHMARKS = ("ViDoRe", "KoViDoRe", "JinaVDR")
SCREENSHOT_CORPORA = {
    "VDRMultilingualRetrieval",  # "Multilingual Visual Document retrieval", llamaindex/vdr-multilingual-test
    "OmniWikiV2IRetrieval",  # "Retrieve the Wikipedia page screenshot ..." (Wiki-SS)
    *(t.metadata.name for t in TASKS if t.metadata.name.startswith("VisRAGRet")),  # VisRAG page corpora
}
BENCHMARK_PAGES = {
    t.metadata.name for b in mteb.get_benchmarks() if b.name.startswith(PAGE_BENCHMARKS) for t in b.tasks
}
EXPECTED_PAGES = (
    BENCHMARK_PAGES
    | SCREENSHOT_CORPORA
    | {t.metadata.name for t in TASKS if t.metadata.type == "DocumentUnderstanding"}
)


def _png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PAGE = _png()


class Recorder:
    """Stands in for MoCaEncoder: records the items and returns seeded unit vectors."""

    def __init__(self, dim: int = 8):
        from moca_model.cache import EncodeStats

        self.last_stats = EncodeStats()
        self.calls: list[list] = []
        self.rng = np.random.default_rng(0)
        self.dim = dim

    def encode(self, items, **kwargs):
        self.calls.append(list(items))
        out = self.rng.standard_normal((len(items), self.dim)).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def stub_model(instructions: str = "default") -> MoCaMTEBEncoder:
    """The adapter without a model: everything up to MoCaEncoder.encode runs for real."""
    model = MoCaMTEBEncoder.__new__(MoCaMTEBEncoder)
    model.encoder, model.prompts, model.num_workers, model.instructions = Recorder(), {}, None, instructions
    model.mteb_model_meta = moca_model_meta("stub-org/stub")
    return model


def items_for(model, task, kind) -> list:
    batch = {}
    if "text" in kind.modalities:
        batch["text"] = [QUERY if kind.side == "query" else OCR]
    if "image" in kind.modalities:
        batch["image"] = [PAGE]
    side = PromptType(kind.side) if kind.side else None
    model.encode([batch], task_metadata=task.metadata, hf_split="test", hf_subset="default", prompt_type=side)
    return model.encoder.calls[-1]


def test_the_walk_covers_every_installed_image_task():
    names = [t.metadata.name for t in TASKS]
    assert len(names) == len(set(names)) >= 274
    assert len(BENCHMARK_PAGES & {t.metadata.name for t in mteb.get_benchmark("ViDoRe(v3.1, reranking)").tasks}) == 40


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.metadata.name)
def test_page_corpora_get_the_page_layout_and_raw_queries(task):
    model = stub_model()
    for kind in input_kinds(task):
        if not kind.supported:
            continue
        (item,) = items_for(model, task, kind)
        is_page_input = isinstance(item, dict) and item["text"] == VIDORE_DOCUMENT_PROMPT
        if task.metadata.name not in EXPECTED_PAGES:
            assert not is_page_input, f"{kind}: a non-page task got the page layout"
        elif kind.side == "query" and kind.modalities == ("text",):
            assert item == QUERY, f"{kind}: page queries must be raw, got {item!r}"
        elif kind.side == "document" and "image" in kind.modalities:
            assert item == {"text": VIDORE_DOCUMENT_PROMPT, "image": PAGE}, f"{kind}: got {item!r}"


@pytest.mark.parametrize(
    "name",
    [
        "MockAny2AnyRetrievalI2TTask",
        "MockAny2AnyRetrievalT2ITask",
        "MockImageClassificationTask",
        "MockImageMultilabelClassificationTask",
        "MockImageTextPairClassificationTask",
        "MockMultiChoiceTask",
        "MockVisualSTSTask",
        "MockZeroShotClassificationTask",
    ],
)
def test_input_kinds_are_what_mteb_sends(name):
    import mteb.mocks.mock_tasks as mock_tasks

    task = getattr(mock_tasks, name)()
    model = stub_model()
    seen = []
    inner = MoCaMTEBEncoder.encode

    def spy(self, inputs, *, task_metadata, prompt_type=None, **kwargs):
        batch = next(iter(inputs))
        columns = tuple(sorted(m for m in ("image", "text", "audio", "video") if m in batch))
        seen.append((prompt_type.value if prompt_type else None, columns))
        return inner(self, inputs, task_metadata=task_metadata, prompt_type=prompt_type, **kwargs)

    model.encode = spy.__get__(model)
    mteb.evaluate(model, [task], cache=None, show_progress_bar=False)
    expected = {(k.side, tuple(sorted(k.modalities))) for k in input_kinds(task)}
    assert set(seen) == expected


def test_audio_and_video_inputs_raise_naming_the_task():
    task = mteb.get_task("SpokenCOCOA2IRetrieval")
    with pytest.raises(ValueError, match="SpokenCOCOA2IRetrieval: .* audio"):
        stub_model().encode(
            [{"audio": [b"\0"]}],
            task_metadata=task.metadata,
            hf_split="test",
            hf_subset="default",
            prompt_type=PromptType.query,
        )


def test_docs_table_is_generated_from_the_code(tmp_path, caplog):
    doc = DOCS.read_text()
    assert splice(doc, render()) == doc, "run: python -m moca_bench.mteb_layouts --write docs/mteb.md"
    stale = tmp_path / "mteb.md"
    stale.write_text(doc.replace("| yes: ViDoRe-v2 evaluation (raw query) |", "| stale |", 1))
    with caplog.at_level(logging.ERROR):
        assert main(["--check", str(stale)]) == 1
    assert main(["--write", str(stale)]) == 0 and main(["--check", str(stale)]) == 0


FAMILY_EXAMPLES = ["Imagenet1k", "CIFAR10Clustering", "STS12VisualSTS", "Imagenet1kZeroShot"]


def test_mmeb_option_changes_inputs_of_every_family(tiny_dir):
    """One task per family: the two modes format differently, and the tiny random model's vectors differ."""
    encoder = MoCaMTEBEncoder(str(tiny_dir), device="cpu")
    labels = ["a photo of tench\n.", "a photo of goldfish\n."]
    for name in FAMILY_EXAMPLES:
        task = mteb.get_task(name)
        for kind in input_kinds(task):
            modes = {}
            for instructions in ("default", "mmeb"):
                model = stub_model(instructions)
                if kind.modalities == ("text",):  # zero-shot labels, as mteb's Imagenet1kZeroShot writes them
                    model.encode([{"text": labels}], task_metadata=task.metadata, hf_split="t", hf_subset="d")
                    modes[instructions] = model.encoder.calls[-1]
                else:
                    modes[instructions] = items_for(model, task, kind)
            assert modes["default"] != modes["mmeb"], (name, kind)
            vecs = {m: encoder.encoder.encode(items, show_progress=False) for m, items in modes.items()}
            cosine = float(np.sum(vecs["default"] * vecs["mmeb"], axis=1).min())
            assert cosine < 1 - 1e-4, (name, kind, cosine)
