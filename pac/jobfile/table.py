"""One TOML table read strictly: each key taken once, by name, its type checked; unknown keys refused."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from pac.errors import ConfigError
from pac.jobfile.sections import DATA_SUFFIXES


class Table:
    """One TOML table being read: every value is taken once, by key, with its type checked."""

    def __init__(self, source: str, prefix: str, data: Any, keys: list[str]) -> None:
        self.source, self.prefix = source, prefix
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{prefix}] must be a table, got {described(data)}")
        self.data = data
        refuse_unknown(source, prefix, data, keys)

    def fail(self, key: str, what: str, value: Any = None, show: bool = True) -> ConfigError:
        got = f", got {described(value)}" if show else ""
        return ConfigError(f"{self.source}: {self.prefix}.{key} {what}{got}")

    def has(self, key: str) -> bool:
        return key in self.data

    def required(self, key: str) -> Any:
        if key not in self.data:
            raise ConfigError(f"{self.source}: {self.prefix}.{key} is required")
        return self.data[key]

    def integer(self, key: str, default: int | None, minimum: int) -> int | None:
        value = self.data.get(key, default)
        if key in self.data and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
            raise self.fail(key, f"must be an integer >= {minimum}", value)
        return value

    def number(self, key: str, default: float, low: float, high: float = math.inf,
               low_open: bool = False) -> float:
        if key not in self.data:
            return default
        value = self.data[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > high or value < low or (low_open and value == low):
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            where = f"a number {bound}" + (f" and <= {high:g}" if high != math.inf else "")
            raise self.fail(key, f"must be {where}", value)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false", value)
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.data[key] if key in self.data else default
        if key in self.data and (not isinstance(value, str) or not value.strip()):
            raise self.fail(key, "must be a non-empty string", value)
        return value

    def choice(self, key: str, default: str, allowed: tuple[str, ...], why: str = "") -> str:
        value = self.string(key, default)
        if value not in allowed:
            hint = closest(value, allowed)
            suggestion = f" (did you mean {described(hint)}?)" if hint else ""
            raise ConfigError(f"{self.source}: {self.prefix}.{key} must be one of {', '.join(allowed)}{why}, "
                              f"got {described(value)}{suggestion}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(key, "must be a list of non-empty strings", value)
        if len(set(value)) != len(value):
            raise self.fail(key, "lists an entry twice", value)
        return tuple(value)

    def path(self, key: str, base: Path, required: bool = False) -> Path | None:
        """A path relative to `base` (the job file's directory), made absolute."""
        if required:
            self.required(key)
        text = self.data.get(key)
        if text is None:
            return None
        if not isinstance(text, str) or not text.strip():
            raise self.fail(key, "must be a non-empty string (a path)", text)
        return (base / Path(text).expanduser()).resolve()

    def data_file(self, key: str, base: Path, required: bool = False) -> Path | None:
        path = self.path(key, base, required)
        if path is None:
            return None
        if not path.is_file():
            raise self.fail(key, f"names no file: {path} does not exist" if not path.exists() else
                            f"must be a file, {path} is a directory", show=False)
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise self.fail(key, f"must be a {', '.join(DATA_SUFFIXES)} file, got {path.name!r}", show=False)
        return path


def described(value: Any) -> str:
    return json.dumps(value, default=str)


def closest(word: str, candidates) -> str | None:
    matches = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def refuse_unknown(source: str, prefix: str, data: dict, keys: list[str]) -> None:
    for key in sorted(set(data) - set(keys)):
        name = f"{prefix}.{key}" if prefix else key
        hint = closest(key, keys)
        known = f"did you mean {prefix + '.' if prefix else ''}{hint}?" if hint else \
            f"known keys: {', '.join(keys)}"
        raise ConfigError(f"{source}: unknown key {name} ({known})")


def section_keys(section: type) -> list[str]:
    return [f.name for f in fields(section)]


def looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith(("~", ".")) or text.lower().endswith(".gguf")
