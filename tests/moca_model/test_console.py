"""moca_model.console: one-line errors and exit codes, --debug, quiet third-party logs, lines through tqdm."""

from __future__ import annotations

import logging
import warnings

import pytest

from moca_model import console
from moca_model.errors import MoCaConfigError, MoCaError
from moca_model.images import MoCaInputError
from moca_model.loading import MoCaLoadError


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [(MoCaInputError("item 3: image file not found: 'x.png'"), 1, "error: item 3: image file not found: 'x.png'"),
     (MoCaLoadError("model path not found: 'm'"), 1, "error: model path not found: 'm'"),
     (MoCaConfigError("--train.x: unknown option"), 2, "error: --train.x: unknown option"),
     (FileNotFoundError(2, "No such file or directory", "data.jsonl"), 1,
      "error: No such file or directory: 'data.jsonl'"),
     (KeyboardInterrupt(), 130, "error: interrupted (Ctrl-C)")],
)  # fmt: skip
def test_user_errors_are_one_line_and_an_exit_status(exc, code, line, capsys, monkeypatch):
    monkeypatch.delenv(console.DEBUG_ENV, raising=False)

    def body():
        raise exc

    assert console.run_cli(body) == code
    assert capsys.readouterr().err == line + "\n"


def test_debug_reraises_and_bugs_keep_their_traceback(monkeypatch):
    def body():
        raise MoCaError("shown with its traceback")

    with pytest.raises(MoCaError):
        console.run_cli(body, debug=True)
    monkeypatch.setenv(console.DEBUG_ENV, "1")
    with pytest.raises(MoCaError):
        console.run_cli(body)
    monkeypatch.delenv(console.DEBUG_ENV)
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error
        console.run_cli(lambda: 1 / 0)
    assert console.run_cli(lambda: None) == 0 and console.run_cli(lambda: 3) == 3


def test_input_error_exposes_index_and_detail():
    err = MoCaInputError("item 12: image file not found: 'a.png'")
    assert (err.index, err.detail) == (12, "image file not found: 'a.png'")
    assert isinstance(err, ValueError) and isinstance(err, MoCaError)
    assert MoCaInputError("no prefix").index is None


@pytest.mark.parametrize(("name", "choices", "expected"), [
    ("OKVQA", ["OK-VQA", "A-OKVQA"], "did you mean 'OK-VQA'?"),
    ("imgae", ["text", "image", "images"], "did you mean 'image'?"),
    ("caption", ["text", "image", "images"], ""),
])  # fmt: skip
def test_did_you_mean(name, choices, expected):
    assert console.did_you_mean(name, choices) == expected


def test_default_verbosity_quiets_third_party_and_v_shows_it():
    console.setup_logging(0)
    assert logging.getLogger("transformers").level == logging.ERROR
    assert logging.getLogger("accelerate").level == logging.ERROR
    assert logging.getLogger().level == logging.INFO
    console.setup_logging(1)
    assert logging.getLogger("transformers").level == logging.WARNING and logging.getLogger().level == logging.DEBUG
    console.setup_logging(-1)
    assert logging.getLogger().level == logging.WARNING
    console.setup_logging(0, rank=1)
    assert logging.getLogger().level == logging.WARNING  # other ranks: warnings only
    assert sum(isinstance(h, console.TqdmHandler) for h in logging.getLogger().handlers) == 1


def test_log_lines_go_through_tqdm_write(monkeypatch):
    import tqdm

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, file=None, **kw: written.append(s)))
    console.setup_logging(0, fmt="%(levelname)s %(message)s")
    logging.getLogger("moca_train.engine").info("step 10: loss=1.0")
    assert written == ["INFO step 10: loss=1.0"]


def test_third_party_notes_become_debug_lines(caplog):
    ours = logging.getLogger("moca_model.loading")
    lib = logging.getLogger("transformers")
    before = lib.handlers[:], lib.propagate
    with caplog.at_level(logging.DEBUG, logger="moca_model"), console.third_party_as_debug(ours):
        logging.getLogger("transformers.configuration_utils").warning("Unrecognized keys in `rope_parameters`")
        logging.getLogger("transformers.modeling_utils").error("a real error")
    assert (lib.handlers, lib.propagate) == before
    levels = {r.getMessage(): r.levelno for r in caplog.records if r.name == "moca_model.loading"}
    assert levels == {"transformers: Unrecognized keys in `rope_parameters`": logging.DEBUG,
                      "transformers: a real error": logging.ERROR}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught, console.third_party_as_debug(ours):
        warnings.simplefilter("always")
        warnings.warn("ours, kept", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["ours, kept"]  # not transformers': handed back
