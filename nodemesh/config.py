"""Service configuration: flags and environment into a frozen Struct that rejects unknown keys.

Every service's config subclasses :class:`ServiceConfig`. Precedence: flag > environment
(``NODEMESH_<FIELD>``, upper-case) > ``--config FILE`` (TOML or JSON) > default. An unknown key in
the config file, an unknown flag, or a value of the wrong type is a :class:`ConfigError`.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from nodemesh.errors import ConfigError

__all__ = ["ServiceConfig", "config_to_args", "load_config"]

C = TypeVar("C", bound="ServiceConfig")
ENV_PREFIX = "NODEMESH_"


class ServiceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings every service shares."""

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server URL(s), comma separated."""
    nats_user: str = ""
    nats_password: str = ""
    node: str = "node-1"
    """Name of the node this instance runs on (per-node services) or is placed on."""
    data_dir: str = "/var/lib/nodemesh"
    """Where a service keeps local state (keys, allocations)."""
    health_addr: str = "127.0.0.1:0"
    """host:port for /healthz, /readyz and /metrics; port 0 picks a free one."""
    log_level: str = "info"
    log_format: str = "json"
    """json (one object per line) or text."""
    stream_replicas: int = 1
    """Replicas for streams and buckets (3 on a NATS cluster); used by ``nodemesh nats provision``."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_config(cls: type[C], argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> C:
    """Build ``cls`` from ``argv`` (flags), ``env`` and an optional ``--config`` file."""
    env = os.environ if env is None else env
    fields = msgspec.structs.fields(cls)
    parser = argparse.ArgumentParser(prog=cls.__name__, exit_on_error=False, add_help=True)
    parser.add_argument("--config", default=None, help="TOML or JSON config file")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for f in fields:
        parser.add_argument(_flag(f.name), dest=f.name, default=None, metavar=f.name.upper())
    try:
        ns, unknown = parser.parse_known_args(list(argv) if argv is not None else None)
    except argparse.ArgumentError as e:
        raise ConfigError(str(e)) from e
    if unknown:
        raise ConfigError(f"unknown arguments: {' '.join(unknown)}")

    values: dict[str, Any] = {}
    if ns.config:
        values.update(_read_file(ns.config))
    names = {f.name for f in fields}
    for f in fields:
        key = ENV_PREFIX + f.name.upper()
        if key in env:
            values[f.name] = env[key]
        flag_value = getattr(ns, f.name)
        if flag_value is not None:
            values[f.name] = flag_value
    unknown_keys = set(values) - names
    if unknown_keys:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown_keys))}")
    try:
        cfg = msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid config: {e}") from e
    if ns.print_config:
        print(json.dumps(msgspec.to_builtins(cfg), indent=2, sort_keys=True))
        raise SystemExit(0)
    return cfg


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    try:
        parsed: Any = json.loads(data) if path.endswith(".json") else tomllib.loads(data.decode())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot parse config file {path}: {e}") from e
    if not isinstance(parsed, dict):
        raise ConfigError(f"config file {path} must hold a table")
    return {str(k).replace("-", "_"): v for k, v in parsed.items()}


def config_to_args(cfg: ServiceConfig) -> list[str]:
    """The flags that reproduce ``cfg`` (used by the local supervisor and compose generation)."""
    args: list[str] = []
    for f in msgspec.structs.fields(type(cfg)):
        v = getattr(cfg, f.name)
        if v == f.default:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        args += [_flag(f.name), str(v)]
    return args
