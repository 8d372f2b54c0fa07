"""What every command-line entry point shares: one-line errors, verbosity flags, logging that spares the bars.

- :func:`run_cli` runs a command's body. A :class:`~moca_model.errors.MoCaError` (bad input item, missing
  checkpoint, bad option), a missing file or Ctrl-C becomes one ``error: ...`` line on stderr and a non-zero
  exit status (1; 2 for option errors; 130 for Ctrl-C); ``--debug`` (or ``MOCA_DEBUG=1``) shows the
  traceback instead. Any other exception is a bug and keeps its traceback.
- :func:`add_common_flags` (argparse) / :func:`pop_common_flags` (the training CLIs' own parser):
  ``-v`` (our debug lines and third-party warnings), ``-vv`` (everything), ``-q`` (warnings and errors
  only), ``--debug``.
- :func:`setup_logging`: log lines go through ``tqdm.write``, so they never land on a progress bar's line.
  At the default verbosity, third-party loggers (transformers, accelerate, datasets, ...) show errors only,
  and their Python warnings (deprecations, FutureWarning) are hidden: none of them concerns the user of
  these commands. ``-v`` shows them.
- :func:`third_party_as_debug`: library code (a model load) re-logs transformers' warnings as DEBUG lines
  of its own logger, so they show exactly when the user asks for our debug output (``-v``).
- :func:`did_you_mean`: the suggestion for a near-miss name (``OKVQA`` -> ``OK-VQA``).

Standard library only (``tqdm`` is imported when a line is written), so importing it costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

from moca_model.errors import MoCaError

DEBUG_ENV = "MOCA_DEBUG"
DEFAULT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Loggers (and the modules whose Python warnings) that are quiet at the default verbosity.
THIRD_PARTY = ("transformers", "accelerate", "datasets", "huggingface_hub", "torch", "peft", "deepspeed",
               "sentence_transformers", "fsspec", "filelock", "urllib3", "PIL", "safetensors")  # fmt: skip
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_FLAGS = {"-v": 1, "--verbose": 1, "-vv": 2, "-vvv": 3, "-q": -1, "--quiet": -1}


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``-v/--verbose`` (count), ``-q/--quiet`` and ``--debug`` to an argparse parser."""
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="-v: our debug lines and third-party warnings (transformers, accelerate); -vv: everything")
    group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    group.add_argument("--debug", action="store_true",
                       help=f"show the traceback of an error instead of one line (also ${DEBUG_ENV}=1)")  # fmt: skip


def verbosity_of(args: argparse.Namespace) -> int:
    """-1 (quiet), 0 (default) or the ``-v`` count, from :func:`add_common_flags`' options."""
    return -1 if getattr(args, "quiet", False) else int(getattr(args, "verbose", 0) or 0)


def pop_common_flags(argv: Sequence[str]) -> tuple[list[str], int, bool]:
    """Split ``-v``/``-vv``/``-q``/``--debug`` off an argument list whose options take ``--key VALUE``.

    A token right after ``--key`` (without ``=``) is that option's value and is never taken as a flag.

    Returns:
        ``(remaining arguments, verbosity, debug)``.
    """
    rest: list[str] = []
    verbosity, debug, i = 0, False, 0
    args = list(argv)
    while i < len(args):
        arg = args[i]
        if arg in _FLAGS:
            verbosity = _FLAGS[arg] if _FLAGS[arg] < 0 else max(verbosity, 0) + _FLAGS[arg]
        elif arg == "--debug":
            debug = True
        else:
            rest.append(arg)
            if arg.startswith("--") and "=" not in arg and arg not in ("--help",) and i + 1 < len(args):
                rest.append(args[i + 1])  # the option's value, even if it looks like a flag
                i += 1
        i += 1
    return rest, verbosity, debug


class TqdmHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write``: an open progress bar is redrawn below the line."""

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except ImportError:
            super().emit(record)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(verbosity: int = 0, *, fmt: str = DEFAULT_FORMAT, rank: int = 0) -> None:
    """Configure logging for a command-line run.

    Args:
        verbosity: -1 warnings and errors only; 0 our INFO lines, third-party errors only; 1 also our
            DEBUG lines and third-party warnings; 2 everything.
        fmt: the ``logging`` format of each line.
        rank: this process's rank; ranks other than 0 log warnings and errors only.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, TqdmHandler)]:
        root.removeHandler(handler)
    handler = TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    ours = logging.DEBUG if verbosity >= 1 else logging.WARNING if verbosity < 0 or rank else logging.INFO
    root.setLevel(ours)
    theirs = logging.NOTSET if verbosity >= 2 else logging.WARNING if verbosity == 1 else logging.ERROR
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(theirs)
    # transformers has its own handler and sets its level when it is first imported: tell it by environment too.
    level_name = {logging.NOTSET: "info", logging.WARNING: "warning", logging.ERROR: "error"}[theirs]
    if verbosity == 0:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", level_name)
    else:
        os.environ["TRANSFORMERS_VERBOSITY"] = level_name
    logging.captureWarnings(True)  # Python warnings become log lines (through the bar-safe handler)
    if verbosity < 1:
        pattern = r"(" + "|".join(re.escape(n) for n in THIRD_PARTY) + r")(\.|$)"
        warnings.filterwarnings("ignore", module=pattern)


def error_line(message: str) -> None:
    """Write ``error: <message>`` to stderr (below any open progress bar)."""
    line = f"error: {message}"
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    except ImportError:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def debug_requested(debug: bool = False) -> bool:
    """``--debug`` or ``$MOCA_DEBUG`` set to 1/true/yes."""
    return debug or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def run_cli(body: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run a command's body; user errors become one line and an exit status, bugs keep their traceback.

    Args:
        body: the command (returns its exit status; None means 0).
        debug: re-raise instead (``--debug``; also ``$MOCA_DEBUG``).

    Returns:
        The exit status: the body's, 1 for an input/load/data error or a missing file, 2 for a bad
        option, 130 for Ctrl-C.
    """
    if debug_requested(debug):
        return body() or 0
    try:
        return body() or 0
    except KeyboardInterrupt:
        error_line("interrupted (Ctrl-C)")
        return 130
    except MoCaError as exc:
        error_line(str(exc))
        return exc.exit_code
    except _USER_OS_ERRORS as exc:
        what = f": {exc.filename!r}" if getattr(exc, "filename", None) else ""
        error_line(f"{exc.strerror or exc}{what}")
        return 1


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 1) -> str:
    """``"did you mean 'OK-VQA'?"`` for a near miss of ``name`` among ``choices``, else ``""``.

    Case, spaces and punctuation are ignored first (``OKVQA`` -> ``OK-VQA``), then close spellings count.
    """
    choices = list(dict.fromkeys(choices))

    def norm(s: str) -> str:
        return re.sub(r"[^0-9a-z]", "", s.lower())

    by_norm: dict[str, list[str]] = {}
    for choice in choices:
        by_norm.setdefault(norm(choice), []).append(choice)
    found = by_norm.get(norm(name)) or []
    if not found:
        close = difflib.get_close_matches(norm(name), list(by_norm), n=n, cutoff=0.75)
        found = [c for key in close for c in by_norm[key]]
    found = found[:n]
    return f"did you mean {' or '.join(repr(f) for f in found)}?" if found else ""


class _Relog(logging.Handler):
    """Sends records below ERROR to ``logger.debug``; errors go on at their level."""

    def __init__(self, logger: logging.Logger, source: str):
        super().__init__()
        self.logger, self.source = logger, source

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        level = logging.DEBUG if record.levelno < logging.ERROR else record.levelno
        self.logger.log(level, "%s: %s", self.source, record.getMessage().strip())


@contextlib.contextmanager
def third_party_as_debug(logger: logging.Logger, name: str = "transformers") -> Iterator[None]:
    """Re-log ``name``'s warnings raised inside the block as DEBUG lines of ``logger`` (shown with ``-v``).

    Log records below ERROR and Python warnings raised by ``name``'s modules are re-logged; errors keep
    their level.

    Meant for calls whose warnings never concern our users, e.g. transformers' notes while loading a
    MoCa checkpoint (``rope_scaling`` renamed in 5.x); not thread-safe (it swaps the library's handlers).
    """
    lib = logging.getLogger(name)
    saved = lib.handlers[:], lib.propagate
    lib.handlers, lib.propagate = [_Relog(logger, name)], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        lib.handlers, lib.propagate = saved
    for w in caught:
        module = getattr(w, "filename", "") or ""
        if f"{os.sep}{name}{os.sep}" in module:
            logger.debug("%s: %s: %s", name, w.category.__name__, str(w.message).strip())
        else:  # not the library's: hand it back to the normal warning machinery
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


__all__ = ["MoCaError", "add_common_flags", "did_you_mean", "pop_common_flags", "run_cli", "setup_logging",
           "third_party_as_debug", "verbosity_of"]  # fmt: skip
