"""The typed TOML reader under the segment config loader: hands out keys by type and
records every problem instead of stopping at the first.

A `Table` is one TOML table being read. Its getters return the value, or None for a key
that is absent without a default or wrong (then a problem is recorded in `Problems`, as
``FILE: key.path: what``); `done()` refuses every key nobody asked for, without echoing
its value (someone may have pasted a password there). `Findings` carries what the reading
found that the checks across sections need (the secret files named).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import tomllib
from pathlib import Path
from typing import Any

_TOML_TYPES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


class Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, key: str, what: str) -> None:
        self.lines.append(f"{self.source}: {key}: {what}" if key else f"{self.source}: {what}")


_ABSENT = object()


def _type_name(value: object) -> str:
    for t, name in _TOML_TYPES.items():
        if isinstance(value, t):
            return name
    return f"a {type(value).__name__}"


class Table:
    """One TOML table being read: hands out keys by type, records what is wrong, and
    (`done`) refuses the keys nobody asked for. A getter returns None for a key that is
    absent without a default, or wrong (then a problem is recorded)."""

    def __init__(self, raw: dict[str, Any], path: str, out: Problems, base: Path) -> None:
        self.raw, self.path, self.out, self.base = raw, path, out, base
        self.asked: list[str] = []

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, what: str) -> None:
        self.out.add(self.at(key) if key else self.path, what)

    def has(self, key: str) -> bool:
        return key in self.raw

    def _take(self, key: str, required: bool) -> Any:
        self.asked.append(key)
        if key not in self.raw:
            if required:
                self.problem(key, "missing (required)")
            return _ABSENT
        return self.raw[key]

    def _typed(self, key: str, types: tuple[type, ...], want: str, required: bool) -> Any:
        value = self._take(key, required)
        if value is _ABSENT:
            return _ABSENT
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            self.problem(key, f"expected {want}, got {_type_name(value)}")
            return None
        return value

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._typed(key, (str,), "a string", required)
        if value is _ABSENT:
            return default
        if value is not None and not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def flag(self, key: str, *, required: bool = False, default: bool | None = None) -> bool | None:
        value = self._typed(key, (bool,), "true or false", required)
        return default if value is _ABSENT else value

    def integer(
        self,
        key: str,
        *,
        required: bool = False,
        default: int | None = None,
        at_least: int | None = None,
    ) -> int | None:
        value = self._typed(key, (int,), "an integer", required)
        if value is _ABSENT:
            return default
        if value is not None and at_least is not None and value < at_least:
            self.problem(key, f"must be at least {at_least}, got {value}")
            return None
        return value

    def number(
        self,
        key: str,
        *,
        required: bool = False,
        default: float | None = None,
        above: float | None = None,
        at_least: float | None = None,
        at_most: float | None = None,
    ) -> float | None:
        value = self._typed(key, (int, float), "a number", required)
        if value is _ABSENT:
            return default
        if value is None:
            return None
        if not math.isfinite(value):
            self.problem(key, f"must be a finite number, got {value}")
            return None
        wrong = (
            (above is not None and value <= above)
            or (at_least is not None and value < at_least)
            or (at_most is not None and value > at_most)
        )
        if wrong:
            bounds = [
                f"greater than {above:g}" if above is not None else "",
                f"at least {at_least:g}" if at_least is not None else "",
                f"at most {at_most:g}" if at_most is not None else "",
            ]
            self.problem(key, f"must be {' and '.join(b for b in bounds if b)}, got {value:g}")
            return None
        return float(value)

    def port(self, key: str, *, required: bool = False, default: int | None = None) -> int | None:
        value = self._typed(key, (int,), "an integer", required)
        if value is _ABSENT:
            return default
        if value is not None and not 1 <= value <= 65535:
            self.problem(key, f"port out of range 1-65535: {value}")
            return None
        return value

    def choice(
        self,
        key: str,
        values: tuple[str, ...],
        *,
        required: bool = False,
        default: str | None = None,
    ) -> str | None:
        value = self._typed(key, (str,), "a string", required)
        if value is _ABSENT:
            return default
        if value is not None and value not in values:
            self.problem(key, f"unknown value {value!r} (valid: {', '.join(values)})")
            return None
        return value

    def strs(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...] | None:
        value = self._typed(key, (list,), "an array of strings", False)
        if value is _ABSENT:
            return default
        if value is None:
            return None
        ok = True
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.out.add(f"{self.at(key)}[{i}]", f"expected a string, got {_type_name(item)}")
                ok = False
            elif not item.strip():
                self.out.add(f"{self.at(key)}[{i}]", "must not be empty")
                ok = False
        return tuple(value) if ok else None

    def file(self, key: str, *, required: bool = False) -> Path | None:
        """A path; relative ones are resolved against the config file's directory."""
        value = self.text(key, required=required)
        if value is None:
            return None
        return self.base / Path(value).expanduser()

    def ip(self, key: str, *, required: bool = False) -> str | None:
        value = self._take(key, required)
        return None if value is _ABSENT else ip_value(self, key, value)

    def mapping(self, key: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self._typed(key, (dict,), "a table", required)
        return None if value is _ABSENT else value

    def sub(self, key: str, *, required: bool = False) -> Table | None:
        value = self.mapping(key, required=required)
        return None if value is None else Table(value, self.at(key), self.out, self.base)

    def subs(self, key: str, *, required: bool = False) -> list[Table]:
        """An array of tables (``[[key]]``)."""
        value = self._typed(key, (list,), "an array of tables", required)
        if value is _ABSENT or value is None:
            return []
        tables = []
        for i, item in enumerate(value):
            path = f"{self.at(key)}[{i}]"
            if isinstance(item, dict):
                tables.append(Table(item, path, self.out, self.base))
            else:
                self.out.add(path, f"expected a table, got {_type_name(item)}")
        if required and not value:
            self.problem(key, "must not be empty")
        return tables

    def done(self) -> None:
        """Refuse every key that was not asked for. The value is never echoed."""
        for key in self.raw:
            if key in self.asked:
                continue
            what = "unknown key"
            close = difflib.get_close_matches(key, self.asked, n=1, cutoff=0.6)
            if close:
                what += f" (did you mean {close[0]!r}?)"
            if re.search(r"pass|secret|token|key", key) and not key.endswith("_file"):
                what += "; secrets never go in the config: put it in a file (mode 0600) "
                what += "and name the file with a *_file key"
            self.problem(key, what)


def ip_value(table: Table, key: str, value: object) -> str | None:
    """The normalised IP address in `value`, or None (problem recorded)."""
    if not isinstance(value, str):
        table.problem(key, f"expected an IP address string, got {_type_name(value)}")
        return None
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        table.problem(key, f"not an IP address: {value!r}")
        return None
    if addr.is_unspecified or addr.is_multicast:
        table.problem(key, f"not a unicast host address: {value!r}")
        return None
    return str(addr)


@dataclasses.dataclass
class Findings:
    """What the reading found that the checks across sections need."""

    secrets: list[tuple[str, Path, str]] = dataclasses.field(default_factory=list)


def parse_toml(path: Path, out: Problems) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        out.add("", f"cannot read: {e.strerror}")
    except UnicodeDecodeError:
        out.add("", "not UTF-8 text")
    except tomllib.TOMLDecodeError as e:
        out.add("", f"not valid TOML: {e}")
    return None
