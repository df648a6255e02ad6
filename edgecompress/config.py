"""Frozen-dataclass configs built from plain dicts (YAML), with errors that name the bad key or value, and the
registries (name -> extension) every extension point uses.

Light on purpose: no torch, Ultralytics or runtime imports, so validating a recipe loads none of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from edgecompress.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A recipe value is unknown, of the wrong type or out of range."""


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok; used in __post_init__ validators."""
    if not ok:
        raise ConfigError(message)


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """The extensions of one kind (targets, runtimes, pruning criteria, allocations, calibration methods,
    quantizers), by name: `REGISTRY.add(name, item)`, or `@REGISTRY.register(name)` on a class, which registers an
    instance of it; `REGISTRY[name]` raises a ConfigError that suggests the closest name on a miss."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")  # a bug in our tables, not input
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[type], type]:
        def register(cls: type) -> type:
            self.add(name, cls())
            return cls

        return register

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}{suggest(str(name), self._items)}; "
                              f"choose one of {', '.join(self._items)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())

    def values(self) -> Iterator[T]:
        return iter(self._items.values())


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from `data`, checking keys and types; `where` names the section in errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {key!r}{suggest(str(key), fields)}; valid keys are {', '.join(fields)}"
            )
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-ready dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            hint_text = suggest(str(value), map(str, choices))
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}{hint_text}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"config field {where} has unsupported type {hint}")  # a bug in our dataclass, not input
