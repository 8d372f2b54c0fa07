"""The one config parser of every training entry point: YAML recipes + dotted overrides -> dataclass.

``parse_config(argv, CLConfig)`` accepts::

    --config configs/cl/tiny.yaml more.yaml              # YAML files, merged in order (or --config twice)
    --train.learning_rate 1e-4 --train.max_steps=20      # dotted overrides (values parsed as YAML)
    --data.datasets.0.max_rows 100                        # list items by index
    --model.lora.target_modules '[q_proj, v_proj]'        # lists/dicts in YAML flow syntax ('{path: /x}':
                                                          #   a space after each colon, or YAML reads one key)
    -v / -vv / -q, --debug                                # verbosity; a traceback instead of one error line
    --help                                                # every field with type, default and docstring

A small parser over the dataclasses instead of jsonargparse (not a dependency) or HfArgumentParser
(which flattens nested sections): the dataclass field docstrings are the help text (read from the
source with ``ast``, as jsonargparse does), values are coerced to the annotated types, and an unknown
option fails with the nearest valid names. Every error is a :class:`~moca_model.errors.MoCaConfigError`
(a ``ValueError``) naming the option; :func:`stage_main` prints it as one line. The resolved config is
written next to each checkpoint by :func:`moca_train.checkpoint.save_resolved_config` (re-loadable with
``--config``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import logging
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from moca_model.console import pop_common_flags, run_cli, setup_logging
from moca_model.errors import MoCaConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. frozen app): help without docs
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, name: str) -> Any:  # noqa: C901 - one branch per supported annotation
    """Convert a YAML/CLI value to the annotated type, or raise ``ValueError`` naming the option."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"--{name}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"--{name}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"--{name}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_config(tp, value, prefix=f"{name}.")
    if origin in (list, Sequence) or tp is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"--{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{name}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"--{name}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if value is None:
        raise ValueError(f"--{name}: expected {_type_name(tp)}, got null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"--{name}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"--{name}: expected {tp.__name__}, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value  # YAML reads "1e-4" as a string
            if tp is int:
                if float(number) != int(number):
                    raise ValueError
                return int(number)
            return float(number)
        except (TypeError, ValueError):
            raise ValueError(f"--{name}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"--{name}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    raise TypeError(f"--{name}: unsupported annotation {tp!r}")


def build_config(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Instantiate a (nested) dataclass from a mapping, coercing values and rejecting unknown keys.

    Args:
        cls: the dataclass.
        data: field values; nested dataclasses as nested mappings; missing fields keep their defaults.
        prefix: dotted path of ``cls`` inside the root config, for error messages.

    Returns:
        The instance (its ``__post_init__`` validation has run).

    Raises:
        MoCaConfigError: unknown option, wrong type, missing required field or failed validation.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=3)
        hint = f"; did you mean {', '.join('--' + prefix + c for c in close)}?" if close else ""
        raise MoCaConfigError(f"--{prefix}{unknown[0]}: unknown option{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if not dataclasses.is_dataclass(hints[name]):
                raise MoCaConfigError(f"--{prefix}{name}: required")
            kwargs[name] = build_config(hints[name], {}, prefix=f"{prefix}{name}.")
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Write ``value`` at ``a.b.0.c`` inside nested dicts/lists (list items addressed by index)."""
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise MoCaConfigError(f"--{dotted}: {key!r} is not an index of a {len(node)}-item list")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif last:
            node[key] = value
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, (dict, list)):
                raise MoCaConfigError(f"--{dotted}: {'.'.join(keys[: i + 1])} is not a section")


def _deep_merge(base: dict, update: Mapping) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def help_text(cls: type, *, prog: str = "") -> str:
    """``--help`` text: usage line, then every (nested) field with type, default and docstring."""
    lines = [f"usage: {prog} [--config FILE.yaml ...] [--section.field VALUE ...] [-v | -q] [--debug]", "",
             "Several --config files merge in order; overrides apply after all files. -v shows third-party warnings",
             "and our debug lines, -q warnings only; --debug shows an error's traceback instead of one line.", ""]
    if cls.__doc__:
        lines += [inspect.cleandoc(cls.__doc__), ""]

    def walk(klass: type, prefix: str) -> None:
        hints, docs = typing.get_type_hints(klass), field_docs(klass)
        for f in dataclasses.fields(klass):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                lines.append(f"{prefix}{f.name}: {docs.get(f.name, '')}")
                walk(tp, f"{prefix}{f.name}.")
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "required"
            default = (
                [dataclasses.asdict(d) if dataclasses.is_dataclass(d) else d for d in default]
                if isinstance(default, list)
                else default
            )
            lines.append(f"  --{prefix}{f.name} {_type_name(tp)}  (default: {default})")
            doc = docs.get(f.name, "")
            lines.extend("      " + line for line in textwrap.wrap(doc, 100))

    walk(cls, "")
    return "\n".join(lines) + "\n"


def _parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with errors that name ``where`` and flow mappings checked for ``key:value``.

    Raises:
        MoCaConfigError: invalid YAML, or a flow mapping key that swallowed its value (``{path:/x}``).
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MoCaConfigError(f"{where}: not valid YAML{at}: {problem}; quote the value for the shell, "
                              "e.g. '[{path: /x}]'") from None  # fmt: skip
    _check_flow_keys(value, where)
    return value


def _check_flow_keys(value: Any, where: str) -> None:
    """Reject ``{path:/x}``: YAML needs a space after a colon, else it reads one key ``path:/x`` without a value."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and item is None and re.match(r"^[\w.-]+:\S", key):
                name, _, rest = key.partition(":")
                raise MoCaConfigError(
                    f"{where}: YAML read {key!r} as one key without a value: in {{...}} flow syntax a colon needs "
                    f"a space after it; write '{{{name}: {rest}}}'"
                )
            _check_flow_keys(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_flow_keys(item, where)


def _load_config_file(value: str) -> dict:
    path = Path(value)
    if not path.is_file():
        raise MoCaConfigError(f"--config: no such file {value!r}")
    loaded = _parse_yaml(path.read_text(), value) or {}
    if not isinstance(loaded, dict):
        raise MoCaConfigError(f"--config: {value!r} must hold a mapping at the top level")
    return loaded


def parse_config(argv: Sequence[str] | None, cls: type[T], *, prog: str | None = None) -> T:
    """Parse ``--config`` files and dotted overrides into ``cls``.

    Args:
        argv: arguments without the program name; None reads ``sys.argv[1:]``.
        cls: the root config dataclass (e.g. ``CLConfig``).
        prog: program name shown in ``--help``.

    Returns:
        The validated config.

    Raises:
        SystemExit: ``--help`` (after writing the help text to stdout, code 0).
        MoCaConfigError: unreadable file, unknown option, bad value or failed validation; the message
            names the option (a ``ValueError``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        sys.stdout.write(help_text(cls, prog=prog or f"python -m {cls.__module__}"))
        raise SystemExit(0)
    tree: dict = {}
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise MoCaConfigError(f"unexpected argument {arg!r}; options look like --section.field VALUE")
        key, eq, value = arg[2:].partition("=")
        values = [value]
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
                raise MoCaConfigError(f"--{key}: missing value")
            values, i = [args[i + 1]], i + 1
            while key == "config" and i + 1 < len(args) and not args[i + 1].startswith("--"):
                values.append(args[i + 1])  # --config a.yaml b.yaml
                i += 1
        i += 1
        if key == "config":
            for file in values:
                _deep_merge(tree, _load_config_file(file))
        else:
            overrides.append((key, _parse_yaml(value, f"--{key} {value}") if (value := values[0]) != "" else ""))
    for key, value in overrides:  # after all files, whatever the order on the command line
        _set_dotted(tree, key, value)
    try:
        return build_config(cls, tree)
    except MoCaConfigError:
        raise
    except ValueError as exc:  # type coercion and __post_init__ validation name the option themselves
        raise MoCaConfigError(str(exc)) from exc


def stage_main(argv: Sequence[str] | None, cls: type[T], run: Callable[[T], Any], *, prog: str) -> int:
    """The main of a training entry point: flags, logging, config, run; errors as one line (see module docs).

    Returns:
        0 when the run finished; 2 for a config error; 1 for a data or load error; 130 / 143 when
        SIGINT / SIGTERM stopped it (:mod:`moca_train.stopping` says which checkpoint to resume from).
    """
    args, verbosity, debug = pop_common_flags(sys.argv[1:] if argv is None else argv)
    setup_logging(verbosity, fmt="%(asctime)s %(levelname)s %(name)s: %(message)s",
                  rank=int(os.environ.get("RANK", "0")))  # fmt: skip

    def body() -> int:
        from moca_train.stopping import StopRequested

        cfg = parse_config(args, cls, prog=prog)
        try:
            run(cfg)
        except StopRequested as stop:
            return stop.exit_code
        return 0

    return run_cli(body, debug=debug)
