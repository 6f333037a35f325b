"""The daemon's configuration: /etc/pacd/pacd.toml (or --config), then command-line flags on top.

Example file (every key optional):

    host = "0.0.0.0"            # address to listen on
    port = 7443                 # 0 picks a free port
    state_dir = "/var/lib/pacd" # node id, certificates, stored profiles
    memory_budget = "4GiB"      # memory offered to jobs; default half of physical memory
    mdns = true                 # advertise as _pacd._tcp.local.
    mdns_interfaces = []        # addresses of the interfaces to advertise on; empty: all
    insecure = false            # loopback development only: no TLS, no pairing
    warm_up = false             # import the training code at start (first job ~3 s sooner, ~340 MB more held idle)
    wyoming = false             # serve the tuned model to Home Assistant over Wyoming (plain TCP, no auth)
    wyoming_host = ""           # its address; empty: as host
    wyoming_port = 10800        # 0 picks a free port
    wyoming_model = ""          # a deployed chat model's id or name; empty: the newest
    wyoming_languages = ["en"]  # what Home Assistant is told the model speaks
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from pac.errors import ConfigError
from pac.formats import parse_size
from pac.limits import MESSAGE_LIMIT_BYTES

DEFAULT_CONFIG_PATH = Path("/etc/pacd/pacd.toml")
DEFAULT_PORT = 7443
MiB = 1024 * 1024


@dataclass(frozen=True)
class DaemonConfig:
    host: str = "0.0.0.0"  # address to bind; a loopback address for insecure development
    port: int = DEFAULT_PORT  # TCP port; 0 lets the kernel pick (the bound port is printed)
    state_dir: Path = Path("/var/lib/pacd")  # persistent node id, TLS identity, stored profiles
    memory_budget_bytes: int = 0  # memory offered to jobs; 0 means half of physical memory
    mdns: bool = True  # advertise over mDNS
    mdns_interfaces: tuple[str, ...] = ()  # interface addresses for mDNS; empty means all
    insecure: bool = False  # no TLS and no pairing; loopback only, warns loudly
    max_message_bytes: int = MESSAGE_LIMIT_BYTES  # largest gRPC message accepted or sent (tensor chunks are 4 MiB)
    shutdown_grace_s: float = 5.0  # time in-flight calls get to finish on SIGTERM
    port_file: Path | None = None  # where to write the bound port once listening
    log_level: str = "info"  # debug, info, warning, error
    warm_up: bool = False  # import the training code in the background once serving, not at the first job
    wyoming: bool = False  # serve the tuned model to Home Assistant over Wyoming (pacd/wyoming.py)
    wyoming_host: str = ""  # "": as host
    wyoming_port: int = 10800
    wyoming_model: str = ""  # "": the newest deployed chat model
    wyoming_languages: tuple[str, ...] = ("en",)

    def __post_init__(self) -> None:
        for key in ("port", "wyoming_port"):
            if not 0 <= getattr(self, key) <= 65535:
                raise ConfigError(f"{key} must be 0..65535, got {getattr(self, key)}")
        if self.memory_budget_bytes < 0:
            raise ConfigError(f"memory_budget must be positive, got {self.memory_budget_bytes}")
        if not MiB <= self.max_message_bytes <= 256 * MiB:
            raise ConfigError(f"max_message_bytes must be 1 MiB..256 MiB, got {self.max_message_bytes}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.insecure and not is_loopback(self.host):
            raise ConfigError(f"insecure mode listens on loopback only, not {self.host!r}; "
                              "pair the device instead (see docs/security.md)")

    @property
    def memory_budget(self) -> int:
        return self.memory_budget_bytes or psutil.virtual_memory().total // 2


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_FIELDS = {f.name: f for f in dataclasses.fields(DaemonConfig)}
_ALIASES = {"memory_budget": "memory_budget_bytes", "max_message_size": "max_message_bytes"}


def _coerce(key: str, value: Any) -> Any:
    name = _ALIASES.get(key, key)
    if name not in _FIELDS:
        import difflib

        names = sorted(set(_FIELDS) | set(_ALIASES))
        near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        raise ConfigError(f"unknown configuration key {key!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                          + f" (known: {', '.join(names)})")
    if name in ("memory_budget_bytes", "max_message_bytes"):
        return name, parse_size(value, key)
    if name in ("state_dir", "port_file"):
        return name, Path(value) if value is not None else None
    if name in ("mdns_interfaces", "wyoming_languages"):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return name, tuple(value)
    expected = {"host": str, "port": int, "mdns": bool, "insecure": bool, "shutdown_grace_s": (int, float),
                "log_level": str, "warm_up": bool, "wyoming": bool, "wyoming_host": str, "wyoming_port": int,
                "wyoming_model": str}[name]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key} has the wrong type: {value!r}")
    return name, value


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> DaemonConfig:
    """Read `path` (the default path may be absent; an explicit one must exist), then apply overrides."""
    values: dict[str, Any] = {}
    source = path or DEFAULT_CONFIG_PATH
    if path is not None or source.exists():
        try:
            values = tomllib.loads(source.read_text())
        except FileNotFoundError as error:
            raise ConfigError(f"configuration file {source} does not exist") from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source}: {error}") from error
        values = values.get("pacd", values)  # accept a [pacd] table or top-level keys
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return DaemonConfig(**dict(_coerce(k, v) for k, v in values.items()))


def config_with(config: DaemonConfig, **changes: Any) -> DaemonConfig:
    return dataclasses.replace(config, **changes)


__all__ = ["DaemonConfig", "load_config", "parse_size", "is_loopback", "DEFAULT_CONFIG_PATH"]
