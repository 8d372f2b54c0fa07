"""The errors a user can fix: every command-line entry point prints them as one line, without a traceback.

- :class:`MoCaError`: the base (exit status 1). Subclasses: ``MoCaInputError`` (an item that cannot be
  encoded, :mod:`moca_model.images`), ``MoCaLoadError`` (a checkpoint that cannot be found or loaded,
  :mod:`moca_model.loading`), ``MMEBDataError`` (benchmark data), ``ExportError`` (the
  sentence-transformers export).
- :class:`MoCaConfigError`: a bad option, config file or override (exit status 2, as argparse's usage errors).

Both derive from the built-in class that code already catches (``ValueError`` / ``RuntimeError`` in the
subclasses), so raising them changes no caller. Standard library only: imported by every entry point.
"""

from __future__ import annotations


class MoCaError(Exception):
    """A problem the user can fix from its message alone (a path, an option, an input item)."""

    exit_code = 1


class MoCaConfigError(MoCaError, ValueError):
    """A bad command-line option, config file or override; the message names the option."""

    exit_code = 2
