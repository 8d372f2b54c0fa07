"""python -m moca_bench.local_beir: a vidore-benchmark BEIR folder from page images + a queries file."""

from __future__ import annotations

import json

import pytest

datasets = pytest.importorskip("datasets")

from PIL import Image  # noqa: E402

from moca_bench.local_beir import build, main  # noqa: E402


@pytest.fixture
def pages(tmp_path):
    root = tmp_path / "pages"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["b.png", "a.jpg", "sub/c.png"]):
        Image.new("RGB", (40 + 10 * i, 50), (60 * i, 90, 30)).save(root / name)
    (root / "notes.txt").write_text("not a page")
    return root


def _queries(tmp_path, rows, name="q.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_builds_the_layout_vidore_loads(pages, tmp_path):
    q = _queries(tmp_path, [{"query": "first", "pages": ["b.png"]}, "",
                            {"query": "second", "pages": {"sub/c.png": 2, "a.jpg": 1}, "id": 7}])  # fmt: skip
    out = build(pages, q, tmp_path / "out")
    load = {p: datasets.load_dataset(str(out), name=p, split="test", cache_dir=str(tmp_path / "hf"))
            for p in ("corpus", "queries", "qrels")}  # fmt: skip
    assert load["corpus"]["corpus-id"] == [0, 1, 2] and load["corpus"]["image_filename"] == ["a.jpg", "b.png",
                                                                                              "sub/c.png"]
    assert load["corpus"][0]["image"].size == (50, 50)  # decoded as an image; a.jpg is page 0 (name order)
    assert load["queries"]["query-id"] == [0, 7] and load["queries"]["query"] == ["first", "second"]
    assert sorted(zip(load["qrels"]["query-id"], load["qrels"]["corpus-id"], load["qrels"]["score"])) == [
        (0, 1, 1), (7, 0, 1), (7, 2, 2)]  # fmt: skip


def test_a_rebuilt_folder_is_never_read_from_a_stale_cache(pages, tmp_path):
    cache = str(tmp_path / "hf")
    build(pages, _queries(tmp_path, [{"query": "one", "pages": ["b.png"]}]), tmp_path / "out")
    assert len(datasets.load_dataset(str(tmp_path / "out"), name="queries", split="test", cache_dir=cache)) == 1
    two = _queries(tmp_path, [{"query": "one", "pages": ["b.png"]}, {"query": "two", "pages": ["a.jpg"]}], "q2.jsonl")
    build(pages, two, tmp_path / "out")  # a folder this command wrote is rebuilt without --overwrite
    assert len(datasets.load_dataset(str(tmp_path / "out"), name="queries", split="test", cache_dir=cache)) == 2


@pytest.mark.parametrize(
    ("row", "needle"),
    [('{"query": "x", "pages": ["b.pgn"]}', "q.jsonl:2: page 'b.pgn' is not in PAGES_DIR (did you mean 'b.png'?)"),
     ('{"query": "x", "page": ["b.png"]}', "q.jsonl:2: unknown key 'page' (did you mean 'pages'?); a query's keys "
                                           "are query, pages, id"),
     ('{"query": "x", "pages": []}', "q.jsonl:2: 'pages' must name at least one relevant page"),
     ('{"query": "x", "pages": {"b.png": 0}}', "q.jsonl:2: the score of page 'b.png' must be a positive integer"),
     ('{"query": "", "pages": ["b.png"]}', "q.jsonl:2: 'query' must be a non-empty string"),
     ('{"query": "x", "pages": ["b.png"], "id": 0}', "q.jsonl:2: 'id' must be an integer not used by another query"),
     ("{bad", "q.jsonl:2: invalid JSON")],
)  # fmt: skip
def test_bad_queries_are_one_line_naming_the_line(pages, tmp_path, capsys, row, needle):
    q = _queries(tmp_path, ['{"query": "ok", "pages": ["a.jpg"]}', row])
    assert main([str(pages), str(q), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and needle in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_bad_pages_and_existing_output(pages, tmp_path, capsys):
    q = _queries(tmp_path, [{"query": "ok", "pages": ["a.jpg"]}])
    (pages / "broken.png").write_bytes(b"not an image")
    assert main([str(pages), str(q), str(tmp_path / "out")]) == 1
    assert f"cannot read page image {str(pages / 'broken.png')!r}" in capsys.readouterr().err
    (pages / "broken.png").unlink()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    assert main([str(pages), str(q), str(tmp_path / "out")]) == 1
    assert "exists and was not written by this command; pass --overwrite" in capsys.readouterr().err
    assert main([str(tmp_path / "nope"), str(q), str(tmp_path / "o2")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    empty = _queries(tmp_path, ["", " "], "empty.jsonl")
    assert main([str(pages), str(empty), str(tmp_path / "o3")]) == 1
    assert "empty.jsonl: no queries" in capsys.readouterr().err
