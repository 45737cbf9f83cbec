"""Service configuration from environment variables into frozen, documented dataclasses.

Every service declares its settings as a frozen dataclass with a docstring per field (the
string literal right under the field) and reads them with `from_env`::

    @dataclasses.dataclass(frozen=True)
    class StoreConfig:
        port: int = 50051
        \"\"\"gRPC port; 0 picks a free one.\"\"\"
        directory: Path = Path("/data")
        \"\"\"Where episodes are stored.\"\"\"

        def __post_init__(self):
            check(self.port >= 0, "MTOPT_STORE_PORT", "must be >= 0")

    config = from_env(StoreConfig, "MTOPT_STORE_")   # reads MTOPT_STORE_PORT, MTOPT_STORE_DIRECTORY

Supported field types: str, int, float, bool, Path, tuple[X, ...] (comma separated) and
``X | None`` of those (an empty value means None). Fields without a default are required.
Every error is a `ConfigError` that names the variable to set and what it should contain.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting is missing or invalid; the message says which environment variable to set."""


def env_name(prefix: str, field_name: str) -> str:
    """The environment variable that holds ``field_name``: prefix + upper-case field name."""
    return f"{prefix}{field_name.upper()}"


def check(condition: bool, variable: str, message: str) -> None:
    """Raises ConfigError("<variable> <message>") unless ``condition`` holds.

    For use in ``__post_init__`` validation so errors name the variable to fix.
    """
    if not condition:
        raise ConfigError(f"{variable} {message}")


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings of a dataclass's fields (the string literal right after each field), including
    the fields it inherits from dataclass bases (a subclass's docstring wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = inspect.cleandoc(node.value.value)
    return docs


def describe(cls: type, prefix: str) -> str:
    """A human-readable table of a config class's variables, defaults and docs (for --help)."""
    docs = field_docs(cls)
    lines = []
    own = cls.__dict__.get("__annotations__", {})
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):  # the class's own fields first
        default = _default_of(f)
        shown = "(required)" if default is dataclasses.MISSING else f"default {_format(default)!s}"
        lines.append(f"{env_name(prefix, f.name)}  {shown}\n    {docs.get(f.name, '')}")
    return "\n".join(lines)


def from_env(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Builds ``cls`` from ``<prefix><FIELD>`` environment variables.

    Unset (or, for optional fields, empty) variables keep the field's default; ``overrides``
    take precedence over the environment (for fields the caller computes itself). Raises
    ConfigError naming the variable on a missing required value, a value that does not parse,
    or a failed ``__post_init__`` check.
    """
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        var = env_name(prefix, f.name)
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
            continue
        raw = env.get(var)
        if raw is None:
            if _default_of(f) is dataclasses.MISSING:
                hint = f" ({docs[f.name]})" if f.name in docs else ""
                raise ConfigError(f"{var} is required but not set{hint}")
            continue
        try:
            kwargs[f.name] = parse_value(raw, hints[f.name])
        except ValueError as e:
            raise ConfigError(f"{var}={raw!r} is invalid: {e}") from None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {cls.__name__} from {prefix}* variables: {e}") from None


def parse_value(raw: str, hint: Any) -> Any:
    """Parses one environment string as ``hint`` (str, int, float, bool, Path, tuple, Optional)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise ValueError(f"unsupported union type {hint}")
        if raw.strip() == "" and type(None) in args:
            return None
        return parse_value(raw, inner[0])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
            parts = [p.strip() for p in raw.split(",") if p.strip()]
            return tuple(parse_value(p, item) for p in parts)
        parts = [p.strip() for p in raw.split(",")]
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {len(parts)}")
        return tuple(parse_value(p, a) for p, a in zip(parts, args))
    if hint is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected one of true/false, 1/0, yes/no, on/off")
    if hint is int:
        try:
            return int(raw.strip().replace("_", ""), 0)
        except ValueError:
            raise ValueError("expected an integer") from None
    if hint is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    if hint is Path:
        if not raw.strip():
            raise ValueError("expected a path, got an empty string")
        return Path(raw.strip()).expanduser()
    if hint is str:
        return raw
    raise ValueError(f"unsupported config field type {hint}")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value is None:
        return "(unset)"
    return str(value)
