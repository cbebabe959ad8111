"""Validation helpers shared by the spec sections: each failure is a `SpecError` naming the field."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from .errors import SpecError


def fail(path: str, value: object, valid: str) -> SpecError:
    return SpecError(path, value, valid)


def coerce_section(cls: type[Any], value: Any, path: str) -> Any:
    """Build a section dataclass from an instance, a mapping or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise fail(path, value, f"expected a mapping with keys {sorted(cls.field_names())}")
    unknown = set(value) - cls.field_names()
    if unknown:
        raise fail(
            f"{path}.{sorted(unknown)[0]}",
            value[sorted(unknown)[0]],
            f"unknown key; valid keys of '{path}' are {sorted(cls.field_names())}",
        )
    require(cls, value, f"{path}.")
    try:
        return cls(**value)
    except SpecError as e:
        # Re-raise with the full dotted path of the field.
        raise SpecError(f"{path}.{e.field}", e.value, e.valid) from None


def require(cls: type[Any], value: Mapping[str, Any], prefix: str) -> None:
    for f in fields(cls):
        if (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                and f.name not in value):
            raise fail(f"{prefix}{f.name}", None,
                        f"required key is missing; valid keys are {sorted(cls.field_names())}")


def number(path: str, value: Any, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, integer: bool = False) -> Any:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(path, value, f"expected {kind}")
    if integer and not float(value).is_integer():
        raise fail(path, value, f"expected {kind}")
    if not math.isfinite(value):
        raise fail(path, value, f"expected a finite {'integer' if integer else 'number'}")
    if low is not None and (value <= low if low_open else value < low):
        raise fail(path, value, f"expected {kind} {'>' if low_open else '>='} {low}"
                    + (f" and <= {high}" if high is not None else ""))
    if high is not None and value > high:
        raise fail(path, value, f"expected {kind} <= {high}"
                    + (f" and {'>' if low_open else '>='} {low}" if low is not None else ""))
    return int(value) if integer else float(value)


def choice(path: str, value: Any, valid: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise fail(path, value, f"valid values are {list(valid)}")
    return value


def opt_path(path: str, value: Any) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | Path) or str(value) == "":
        raise fail(path, value, "expected a file system path (string) or null")
    return Path(value)


class Section:
    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}  # type: ignore[arg-type]

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


def date(path: str, value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise fail(path, value, "expected an ISO date such as '2024-05-01'")
