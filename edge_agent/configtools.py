"""Strict parsing of TOML-shaped dicts into frozen dataclasses, with errors that name the key path.

Every config section of the agent (and each device profile) is parsed with these helpers, so a typo
or a wrong type is reported the same way everywhere:

    config.toml: assets -> pump-3 -> channels -> flow: expected a string, got 12 (int)
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a table"}


class ConfigError(ValueError):
    """A configuration value is wrong. `path` is the dotted key path, `value` the offending value."""

    def __init__(self, path: str, message: str, value: Any = None, source: str | Path | None = None) -> None:
        self.path = path
        self.value = value
        self.source = str(source) if source is not None else None
        self.message = message
        where = f"{self.source}: " if self.source else ""
        shown = f" (value: {value!r})" if value is not None else ""
        super().__init__(f"{where}{path or '<top level>'}: {message}{shown}")

    def with_source(self, source: str | Path) -> ConfigError:
        return ConfigError(self.path, self.message, self.value, source)


def join(path: str, key: str | int) -> str:
    """`join("assets", "pump-3")` -> `assets -> pump-3` (the style Frigate prints)."""
    return f"{path} -> {key}" if path else str(key)


class Section:
    """A view on one table of the config that tracks which keys were read.

    Call `finish()` after reading: any key that was given but never read is an error (unknown key).
    """

    def __init__(self, data: Any, path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected a table, got {_describe(data)}", data)
        self.data: Mapping[str, Any] = data
        self.path = path
        self._seen: set[str] = set()
        self._asked: set[str] = set()  # keys looked for with `in`: known too, for "did you mean"

    def __contains__(self, key: str) -> bool:
        self._asked.add(key)
        return key in self.data

    def keys(self) -> Iterable[str]:
        return self.data.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def key_path(self, key: str) -> str:
        return join(self.path, key)

    def raw(self, key: str, default: Any = ...) -> Any:
        self._seen.add(key)
        if key not in self.data:
            if default is ...:
                raise ConfigError(self.key_path(key), "is required but missing")
            return default
        return self.data[key]

    def get(self, key: str, kind: type[T], default: Any = ...) -> T:
        """The value at `key`, checked to be of `kind` (an int is accepted where a float is expected)."""
        value = self.raw(key, default)
        if value is default and default is not ...:
            return value
        return check_type(value, kind, self.key_path(key))

    def optional(self, key: str, kind: type[T]) -> T | None:
        return self.get(key, kind, None)

    def choice(self, key: str, choices: Iterable[str], default: Any = ...) -> str:
        value = self.get(key, str, default)
        allowed = list(choices)
        if value not in allowed:
            raise ConfigError(self.key_path(key), f"must be one of {', '.join(allowed)}", value)
        return value

    def number(self, key: str, default: Any = ..., *, minimum: float | None = None,
               maximum: float | None = None, exclusive_minimum: bool = False) -> float:
        value = float(self.get(key, float, default))
        check_range(value, self.key_path(key), minimum, maximum, exclusive_minimum)
        return value

    def integer(self, key: str, default: Any = ..., *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        value = self.get(key, int, default)
        check_range(value, self.key_path(key), minimum, maximum)
        return value

    def section(self, key: str, default: Any = ...) -> Section:
        value = self.raw(key, {} if default is ... else default)
        if value is None:
            value = {}
        return Section(value, self.key_path(key))

    def str_list(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, default)
        return tuple(check_type(item, str, join(self.key_path(key), i)) for i, item in enumerate(value))

    def finish(self) -> None:
        unknown = [key for key in self.data if key not in self._seen]
        if unknown:
            raise unknown_key_error(self, unknown, sorted((self._seen | self._asked) - set(unknown)))


def unknown_key_error(section: Section, unknown: list[str], known: Iterable[str],
                      list_known: bool = False) -> ConfigError:
    """The error for `unknown` keys in `section`: names the first, with the closest of the `known` ones
    (`did you mean ...?`; with `list_known`, all of them when none is close), and the others."""
    key, known = unknown[0], list(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = (f" (did you mean {close[0]}?)" if close
            else f" (the keys are {', '.join(known)})" if list_known and known else "")
    also = f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    return ConfigError(section.key_path(key), "unknown key" + hint + also, section.data[key])


def check_type(value: Any, kind: type[T], path: str) -> T:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # type: ignore[return-value]
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        # TOML has nan and inf; no setting means "never" by them, and NaN passes every range check
        raise ConfigError(path, "expected a finite number", value)
    if kind is int and isinstance(value, bool):
        raise ConfigError(path, "expected an integer, got a boolean", value)
    if not isinstance(value, kind):
        raise ConfigError(path, f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {_describe(value)}",
                          value)
    return value


def check_range(value: float, path: str, minimum: float | None = None, maximum: float | None = None,
                exclusive_minimum: bool = False) -> None:
    if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
        relation = "greater than" if exclusive_minimum else "at least"
        raise ConfigError(path, f"must be {relation} {minimum}", value)
    if maximum is not None and value > maximum:
        raise ConfigError(path, f"must be at most {maximum}", value)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


DEFAULT_CONFIG_PATH = "/etc/edge-agent/agent.toml"


def default_config_path() -> Path:
    """What `--config` means when it is left out: `$EDGE_AGENT_CONFIG`, else /etc/edge-agent/agent.toml."""
    return Path(os.environ.get("EDGE_AGENT_CONFIG", DEFAULT_CONFIG_PATH))


class _GivenConfig(argparse.Action):
    """Stores `--config PATH` and notes that it was given (`config_given`), which a path equal to the
    default cannot tell."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.config_given = True


def add_config_argument(parser: Any) -> None:
    """`--config PATH` for every `edge-agent` command that reads the agent config, with one default for all:
    `$EDGE_AGENT_CONFIG`, else /etc/edge-agent/agent.toml (the packaged path; the systemd unit passes it)."""
    default = default_config_path()
    parser.add_argument("--config", type=Path, default=default, action=_GivenConfig,
                        help=f"agent config file (default: $EDGE_AGENT_CONFIG, else {DEFAULT_CONFIG_PATH}; "
                        f"here {default})")
