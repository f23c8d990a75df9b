"""Checking a decoded JSON value against a handler's declared input type, before the handler runs."""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any

__all__ = ["InputTypeError", "conform", "describe"]

_MAX_SHOWN = 60


class InputTypeError(TypeError):
    """A value that cannot be converted to the declared type; the message says expected and received."""


def conform(value: Any, hint: Any) -> Any:
    """`value` as `hint`: checked, with the lossless conversions JSON needs (int -> float, list -> tuple).

    Hints this module cannot check (plain classes JSON cannot produce, protocols) pass the value
    through unchanged, as before type checking existed.
    """
    return _conform(value, hint, "")


def describe(hint: Any) -> str:
    """A readable name of a type hint: `int`, `list[int]`, `int | None`."""
    if hint is type(None) or hint is None:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _fail(value: Any, hint: Any, where: str) -> InputTypeError:
    shown = repr(value)
    if len(shown) > _MAX_SHOWN:
        shown = shown[:_MAX_SHOWN] + "..."
    at = f" at {where}" if where else ""
    received = "no value (null or an empty body)" if value is None and not where else f"{type(value).__name__} {shown}"
    return InputTypeError(f"expected {describe(hint)}{at}, but received {received}")


def _conform(value: Any, hint: Any, where: str) -> Any:
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return value
    if hint is None or hint is type(None):
        if value is not None:
            raise _fail(value, hint, where)
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _conform(value, args[0], where)
    if origin is typing.Union or origin is types.UnionType:
        return _union(value, hint, args, where)
    if origin is typing.Literal:
        if not any(value == arg and type(value) is type(arg) for arg in args):
            raise _fail(value, hint, where)
        return value
    if hasattr(hint, "__supertype__"):  # typing.NewType
        return _conform(value, hint.__supertype__, where)
    if origin is not None:
        return _generic(value, hint, origin, args, where)
    if isinstance(hint, type):
        return _plain(value, hint, where)
    return value


def _union(value: Any, hint: Any, args: tuple[Any, ...], where: str) -> Any:
    # An exact type match first, so `int | float` keeps 1 an int and `float | str` keeps "1" a str.
    for arg in args:
        if isinstance(arg, type) and type(value) is arg:
            return value
    for arg in args:
        try:
            return _conform(value, arg, where)
        except InputTypeError:
            continue
    raise _fail(value, hint, where)


def _plain(value: Any, hint: type, where: str) -> Any:
    if value is None:
        raise _fail(value, hint, where)
    if hint is bool:
        if type(value) is not bool:
            raise _fail(value, hint, where)
        return value
    if hint is int:
        if isinstance(value, bool):
            raise _fail(value, hint, where)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _fail(value, hint, where)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _fail(value, hint, where)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(value, hint, where)
        return value
    if hint in (list, tuple, set, frozenset, dict):
        return _generic(value, hint, hint, (), where)
    if typing.is_typeddict(hint):
        if not isinstance(value, dict):
            raise _fail(value, hint, where)
        hints = typing.get_type_hints(hint)
        missing = sorted(getattr(hint, "__required_keys__", frozenset()) - set(value))
        if missing:
            raise InputTypeError(f"expected {describe(hint)}{' at ' + where if where else ''} with field {missing[0]!r}, but it is missing")
        return {k: _conform(v, hints[k], f"{where}.{k}" if where else k) if k in hints else v for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _dataclass(value, hint, where)
    if isinstance(value, hint):
        return value
    # A class JSON cannot produce (datetime, a user class): left to the handler, as before.
    return value


def _generic(value: Any, hint: Any, origin: Any, args: tuple[Any, ...], where: str) -> Any:
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable):
        if not isinstance(value, list):
            raise _fail(value, hint, where)
        item = args[0] if args else Any
        return [_conform(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (set, frozenset, collections.abc.Set, collections.abc.MutableSet):
        if not isinstance(value, list):
            raise _fail(value, hint, where)
        item = args[0] if args else Any
        items = [_conform(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        try:
            return frozenset(items) if origin is frozenset else set(items)
        except TypeError:
            raise _fail(value, hint, where) from None
    if origin is tuple:
        if not isinstance(value, list):
            raise _fail(value, hint, where)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(_conform(v, item, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(value, hint, where)
        return tuple(_conform(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        if not isinstance(value, dict):
            raise _fail(value, hint, where)
        if not args:
            return value
        key_hint, value_hint = args
        return {
            _key(k, key_hint, where): _conform(v, value_hint, f"{where}[{k!r}]") for k, v in value.items()
        }
    return value


def _key(key: str, hint: Any, where: str) -> Any:
    # JSON object keys are always strings: `dict[int, X]` reads "1" as 1.
    if hint is int:
        try:
            return int(key)
        except ValueError:
            raise _fail(key, hint, f"{where} key") from None
    return _conform(key, hint, f"{where} key")


def _dataclass(value: Any, cls: type, where: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise _fail(value, cls, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise InputTypeError(f"expected {cls.__name__}{' at ' + where if where else ''}, but received unknown field {unknown[0]!r}")
    for name, f in fields.items():
        if name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputTypeError(f"expected {cls.__name__}{' at ' + where if where else ''} with field {name!r}, but it is missing")
    converted = {k: _conform(v, hints.get(k, Any), f"{where}.{k}" if where else k) for k, v in value.items()}
    return cls(**converted)
