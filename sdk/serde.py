"""Serializers between handler values and the bytes journaled on Kafka, chosen by type hint."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from ._conform import conform

__all__ = [
    "BytesSerde",
    "DataclassJsonSerde",
    "DefaultSerde",
    "JsonSerde",
    "PydanticJsonSerde",
    "Serde",
    "serde_for",
]

T = TypeVar("T")

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"


@runtime_checkable
class Serde(Protocol[T]):
    """Turns a value into bytes and back; `content_type` is advertised in the discovery manifest."""

    content_type: str

    def serialize(self, obj: T | None) -> bytes: ...

    def deserialize(self, buf: bytes) -> T | None: ...


class JsonSerde(Generic[T]):
    """JSON for str, int, float, bool, dict, list; `None` is the empty payload.

    Pydantic models and dataclasses nested in containers are written as JSON objects; with a
    type hint such as `list[Item]` they are read back as those types (via pydantic, if installed).
    With `check_type`, a value that cannot be converted to `type_hint` raises `TypeError` saying
    what was expected and received (handler inputs are checked so, before the handler runs).
    """

    content_type = JSON

    def __init__(self, type_hint: Any = None, *, check_type: bool = False) -> None:
        self.type_hint = type_hint
        self.check_type = check_type
        self._adapter: Any = None

    def serialize(self, obj: T | None) -> bytes:
        if obj is None:
            return b""
        return json.dumps(obj, separators=(",", ":"), default=_to_json).encode("utf-8")

    def deserialize(self, buf: bytes) -> T | None:
        if not buf:
            if self.check_type and self.type_hint is not None:
                conform(None, self.type_hint)
            return None
        data = json.loads(buf)
        if self.check_type and self.type_hint is not None and not _needs_validation(self.type_hint):
            data = conform(data, self.type_hint)
        elif _needs_validation(self.type_hint):
            if self._adapter is None:
                from pydantic import TypeAdapter

                self._adapter = TypeAdapter(self.type_hint)
            data = self._adapter.validate_python(data)
        return typing.cast(T, data)


def _to_json(obj: Any) -> Any:
    """`json.dumps` fallback for models and dataclasses inside containers."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable; give the value a serde")


def _needs_validation(hint: Any) -> bool:
    """True for hints like `list[Item]` whose items are models or dataclasses."""
    args = typing.get_args(hint)
    if not args:
        return False
    for arg in args:
        if isinstance(arg, type) and (_is_pydantic_model(arg) or dataclasses.is_dataclass(arg)):
            return True
        if _needs_validation(arg):
            return True
    return False


class BytesSerde:
    """Raw bytes, passed through untouched."""

    content_type = OCTET_STREAM

    def serialize(self, obj: bytes | None) -> bytes:
        return b"" if obj is None else bytes(obj)

    def deserialize(self, buf: bytes) -> bytes | None:
        return bytes(buf)


class PydanticJsonSerde(Generic[T]):
    """A pydantic `BaseModel` as JSON (`model_dump_json` / `model_validate_json`)."""

    content_type = JSON

    def __init__(self, model: type[T]) -> None:
        self.model = model

    def serialize(self, obj: T | None) -> bytes:
        if obj is None:
            return b""
        text: str = typing.cast(Any, obj).model_dump_json()
        return text.encode("utf-8")

    def deserialize(self, buf: bytes) -> T | None:
        if not buf:
            return None
        return typing.cast(T, typing.cast(Any, self.model).model_validate_json(buf))


class DataclassJsonSerde(Generic[T]):
    """A dataclass as a JSON object (`dataclasses.asdict` / `cls(**fields)`); `check_type` checks field types."""

    content_type = JSON

    def __init__(self, cls: type[T], *, check_type: bool = False) -> None:
        self.cls = cls
        self.check_type = check_type

    def serialize(self, obj: T | None) -> bytes:
        if obj is None:
            return b""
        return json.dumps(dataclasses.asdict(typing.cast(Any, obj)), separators=(",", ":")).encode("utf-8")

    def deserialize(self, buf: bytes) -> T | None:
        if not buf:
            return None
        if self.check_type:
            return typing.cast(T, conform(json.loads(buf), self.cls))
        return self.cls(**json.loads(buf))


class DefaultSerde(Generic[T]):
    """Picks the serde from a type hint: bytes raw, pydantic models, dataclasses, else JSON."""

    def __init__(self, type_hint: Any = None, *, check_type: bool = False) -> None:
        self.type_hint = type_hint
        self.check_type = check_type
        self._inner: Serde[Any] = _pick(type_hint, check_type)
        self.content_type = self._inner.content_type

    def with_maybe_type(self, type_hint: Any) -> DefaultSerde[Any]:
        """The same default choice for another type hint (Restate's name for it)."""
        return DefaultSerde(type_hint)

    def serialize(self, obj: T | None) -> bytes:
        return self._inner.serialize(obj)

    def deserialize(self, buf: bytes) -> T | None:
        if not buf and self.check_type and self.type_hint is not None and not isinstance(self._inner, BytesSerde):
            conform(None, self.type_hint)  # an empty body is None: fine only where None is allowed
        return typing.cast("T | None", self._inner.deserialize(buf))


def serde_for(type_hint: Any, serde: Serde[Any] | None = None, *, check_type: bool = False) -> Serde[Any]:
    """`serde` if given, else the default for `type_hint` (checking values against it with `check_type`)."""
    return serde if serde is not None else DefaultSerde(type_hint, check_type=check_type)


def _pick(type_hint: Any, check_type: bool = False) -> Serde[Any]:
    hint = _unwrap_optional(type_hint)
    if hint is bytes or hint is bytearray:
        return BytesSerde()
    if isinstance(hint, type):
        if _is_pydantic_model(hint):
            return PydanticJsonSerde(hint)
        if dataclasses.is_dataclass(hint):
            return DataclassJsonSerde(hint, check_type=check_type)
    return JsonSerde(type_hint, check_type=check_type)


def _unwrap_optional(hint: Any) -> Any:
    """`X` for `Optional[X]` / `X | None`, so an optional model still gets the model serde."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _is_pydantic_model(cls: type) -> bool:
    # pydantic is optional for deployments: look it up only through the class's own bases.
    return any(
        base.__module__.startswith("pydantic") and base.__name__ == "BaseModel" for base in cls.__mro__
    )
