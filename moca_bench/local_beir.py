r"""``python -m moca_bench.local_beir PAGES_DIR QUERIES.jsonl OUT``: a local ViDoRe (BEIR) dataset from your pages.

Reads a folder of page images and a JSONL file of queries, and writes the folder layout that
``vidore-benchmark evaluate-retriever --dataset-format beir --dataset-name OUT`` loads offline:
``corpus/``, ``queries/`` and ``qrels/`` parquet files (split ``test``, each named by a hash of its
content, so that ``datasets``' cache never serves a rebuilt folder's old content) plus the ``README.md``
whose ``configs:`` block names them (without it, ``datasets`` fails with "Config name is missing").

- PAGES_DIR: every image file in it (and its subfolders), in name order: ``png``, ``jpg``/``jpeg``,
  ``webp``, ``tif``/``tiff``, ``bmp``, ``gif``. Page *i* in that order gets ``corpus-id`` *i*; its file
  name (relative to PAGES_DIR) is kept in ``image_filename``. Each file is stored as it is (its bytes).
- QUERIES.jsonl, one query per line, pages named relative to PAGES_DIR::

      {"query": "What was the revenue in 2021?", "pages": ["report_p3.png"]}
      {"query": "Who signed the contract?", "pages": {"contract_p1.png": 2, "contract_p2.png": 1}}

  ``pages`` is a list (each relevant with score 1) or a mapping to graded scores (positive integers);
  an optional ``id`` (an integer) replaces the line order as ``query-id``. Any other key is an error.

Every problem (a page a query names that is not in PAGES_DIR, an unreadable image, a bad line) is one
``error:`` line naming the file and line. OUT is written to a temporary folder and renamed, so a failed run
leaves nothing half-written. An existing OUT is replaced when this command wrote it (a rebuild), otherwise
only with ``--overwrite``.

The same folder becomes an mteb retrieval task with :func:`mteb_task` (``.venv-mteb``), read as a ViDoRe
page task (raw queries; pages get MoCa's document prompt)::

    import mteb
    from moca_bench.local_beir import mteb_task
    from moca_bench.mteb_models import moca_model_meta

    model = moca_model_meta("./runs/tiny").load_model()
    result = mteb.evaluate(model, [mteb_task("runs/my-pages")], cache=None)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from moca_model.console import add_common_flags, did_you_mean, run_cli, setup_logging, verbosity_of
from moca_model.errors import MoCaError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
QUERY_KEYS = ("query", "pages", "id")
PARTS = ("corpus", "queries", "qrels")
SPLIT = "test"


@dataclass(frozen=True)
class Query:
    """One query: its id, text and ``{page name: relevance}`` (names relative to PAGES_DIR)."""

    id: int
    text: str
    pages: dict[str, int]


def list_pages(pages_dir: Path) -> list[str]:
    """Image files below ``pages_dir`` (relative POSIX names, sorted): the corpus, in ``corpus-id`` order.

    Raises:
        MoCaError: not a folder, or no image in it.
    """
    if not pages_dir.is_dir():
        raise MoCaError(f"PAGES_DIR {str(pages_dir)!r} is not a folder")
    names = sorted(p.relative_to(pages_dir).as_posix() for p in pages_dir.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip
    if not names:
        raise MoCaError(f"no page images in {str(pages_dir)!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return names


def read_queries(path: Path, pages: list[str]) -> list[Query]:
    """Parse QUERIES.jsonl against the corpus' page names.

    Raises:
        MoCaError: a missing file, a bad line, an unknown key, a page not in the corpus, a non-positive score,
            a duplicate id or no query at all; the message names the line.
    """
    if not path.is_file():
        raise MoCaError(f"queries file not found: {str(path)!r}")
    known, out, ids = set(pages), [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MoCaError(f"{where}: invalid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise MoCaError(f'{where}: expected an object {{"query": ..., "pages": [...]}}, got {type(row).__name__}')
        for key in row:
            if key not in QUERY_KEYS:
                hint = did_you_mean(str(key), QUERY_KEYS)
                raise MoCaError(f"{where}: unknown key {key!r}{f' ({hint})' if hint else ''}; a query's keys are "
                                f"{', '.join(QUERY_KEYS)}")  # fmt: skip
        text, rel = row.get("query"), row.get("pages")
        if not isinstance(text, str) or not text.strip():
            raise MoCaError(f"{where}: 'query' must be a non-empty string")
        if isinstance(rel, list):
            rel = dict.fromkeys(rel, 1)
        if not isinstance(rel, dict) or not rel:
            raise MoCaError(f"{where}: 'pages' must name at least one relevant page (a list, or a mapping to scores)")
        for name, score in rel.items():
            if name not in known:
                hint = did_you_mean(str(name), pages)
                raise MoCaError(f"{where}: page {name!r} is not in PAGES_DIR{f' ({hint})' if hint else ''}")
            if not isinstance(score, int) or isinstance(score, bool) or score < 1:
                raise MoCaError(f"{where}: the score of page {name!r} must be a positive integer, got {score!r}")
        qid = row.get("id", len(out))
        if not isinstance(qid, int) or isinstance(qid, bool) or qid in ids:
            raise MoCaError(f"{where}: 'id' must be an integer not used by another query, got {qid!r}")
        ids.add(qid)
        out.append(Query(qid, text, dict(rel)))
    if not out:
        raise MoCaError(f"{path}: no queries (the file is empty or has only blank lines)")
    return out


def _check_image(path: Path) -> bytes:
    from PIL import Image, UnidentifiedImageError

    data = path.read_bytes()
    try:
        import io

        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MoCaError(f"cannot read page image {str(path)!r} ({type(exc).__name__}: {exc})") from None
    return data


def build(pages_dir: str | Path, queries_file: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the BEIR folder ``out`` (module docs); returns it.

    Raises:
        MoCaError: bad input (named), or ``out`` exists and ``overwrite`` is false.
    """
    import datasets
    import pyarrow.parquet as pq

    pages_dir, out = Path(pages_dir), Path(out)
    names = list_pages(pages_dir)
    queries = read_queries(Path(queries_file), names)
    if out.exists() and not (overwrite or _written_here(out)) and (not out.is_dir() or any(out.iterdir())):
        raise MoCaError(f"{str(out)!r} exists and was not written by this command; pass --overwrite to replace it")
    corpus_id = {name: i for i, name in enumerate(names)}
    image = datasets.Features({"corpus-id": datasets.Value("int64"), "image": datasets.Image(),
                               "image_filename": datasets.Value("string")})  # fmt: skip
    parts = {
        "corpus": datasets.Dataset.from_dict(
            {"corpus-id": list(range(len(names))),
             "image": [{"bytes": _check_image(pages_dir / n), "path": n} for n in names],
             "image_filename": names},
            features=image,
        ),  # fmt: skip
        "queries": datasets.Dataset.from_dict({"query-id": [q.id for q in queries],
                                               "query": [q.text for q in queries]}),  # fmt: skip
        "qrels": datasets.Dataset.from_dict({
            "query-id": [q.id for q in queries for _ in q.pages],
            "corpus-id": [corpus_id[n] for q in queries for n in q.pages],
            "score": [s for q in queries for s in q.pages.values()],
        }),  # fmt: skip
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = {}
        for name, ds in parts.items():
            (tmp / name).mkdir()
            written = tmp / name / "part.parquet"
            pq.write_table(ds.data.table, written)  # the schema keeps the features (Image decoding)
            digest = hashlib.blake2b(written.read_bytes(), digest_size=8).hexdigest()
            files[name] = f"{name}/{SPLIT}-{digest}.parquet"  # content in the name: see readme()
            written.rename(tmp / files[name])
        (tmp / "README.md").write_text(readme(files, len(names), len(queries), len(parts["qrels"])))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %s: %d pages, %d queries, %d relevance judgements", out, len(names), len(queries),
                len(parts["qrels"]))  # fmt: skip
    return out


def _written_here(out: Path) -> bool:
    """Whether ``out`` is a folder this command wrote (its README says so): rebuilding it needs no flag."""
    card = out / "README.md"
    return card.is_file() and _SIGNATURE in card.read_text(encoding="utf-8", errors="replace")


_SIGNATURE = "A local BEIR dataset written by `python -m moca_bench.local_beir`"


def readme(files: dict[str, str], n_pages: int, n_queries: int, n_qrels: int) -> str:
    """The dataset card: the ``configs:`` block ``datasets.load_dataset(OUT, name=...)`` reads, then a note.

    ``datasets`` caches a local folder under its name and these paths, not its content: a folder rebuilt
    under the same name would be read from the stale cache. Each file is named by its content's hash, so
    new content means new paths, hence a new cache entry, and the same content reuses its entry.
    """
    configs = "".join(f"- config_name: {p}\n  data_files:\n  - split: {SPLIT}\n    path: {files[p]}\n"
                      for p in PARTS)  # fmt: skip
    return (f"---\nconfigs:\n{configs}---\n\n{_SIGNATURE}: "
            f"{n_pages} pages, {n_queries} queries, {n_qrels} relevance judgements (split `{SPLIT}`).\n")  # fmt: skip


def mteb_task(path: str | Path, *, name: str | None = None, description: str | None = None):
    """The BEIR folder at ``path`` as an mteb ``AbsTaskRetrieval`` (type DocumentUnderstanding, t2i).

    Args:
        path: a folder written by :func:`build` (or any BEIR folder in this layout).
        name: the task name in mteb's results (default: the folder name).
        description: free text for the task's metadata.

    Returns:
        A task instance for ``mteb.evaluate``; main score nDCG@5, as ViDoRe.
    """
    import datasets
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    root = Path(path)
    name = name or root.resolve().name
    metadata = TaskMetadata(
        name=name, type="DocumentUnderstanding", category="t2i", modalities=["text", "image"],
        description=description or f"Local page retrieval from {root}", reference="https://github.com/moca-embed",
        dataset={"path": f"local/{name}", "revision": "local"}, eval_splits=[SPLIT], eval_langs=["eng-Latn"],
        main_score="ndcg_at_5", date=("2025-01-01", "2025-01-01"), domains=[], task_subtypes=[],
        license="not specified", annotations_creators="derived", dialect=[], sample_creation="found",
        bibtex_citation="",
    )  # fmt: skip

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        parts = {p: datasets.load_dataset(str(root), name=p, split=SPLIT) for p in PARTS}
        corpus = parts["corpus"].cast_column("image", datasets.Image(decode=False))
        corpus = datasets.Dataset.from_dict(
            {"id": [str(i) for i in corpus["corpus-id"]], "image": corpus["image"]},
            features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()}),
        )
        queries = datasets.Dataset.from_dict({"id": [str(i) for i in parts["queries"]["query-id"]],
                                              "text": parts["queries"]["query"]})  # fmt: skip
        qrels: dict[str, dict[str, int]] = {}
        for row in parts["qrels"]:
            qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
        split = RetrievalSplitData(queries=queries, corpus=corpus, relevant_docs=qrels, top_ranked=None)
        self.dataset = {"default": {SPLIT: split}}
        self.data_loaded = True

    return type(name, (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data})()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 when OUT was written; 1 (one ``error:`` line) on bad input."""
    parser = argparse.ArgumentParser(prog="python -m moca_bench.local_beir", description=__doc__.split("\n\n")[0],
                                     epilog="Then: vidore-benchmark evaluate-retriever --model-class moca --model-name "
                                            "MODEL --dataset-name OUT --dataset-format beir --split test",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("pages_dir", type=Path, help="folder of page images (png, jpg, webp, tif, bmp, gif)")
    parser.add_argument("queries", type=Path, help='JSONL: {"query": "...", "pages": ["p1.png", ...]} per line')
    parser.add_argument("out", type=Path, help="the dataset folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT even if this command did not write it (a folder it wrote is always rebuilt)")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(verbosity_of(args))
    return run_cli(lambda: build(args.pages_dir, args.queries, args.out, overwrite=args.overwrite) and 0,
                   debug=args.debug)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
