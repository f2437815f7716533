"""nodemesh's error tree.

NodemeshError
├── ConfigError(ValueError)      bad flags, env or config file; the service exits 2
├── DecodeError(ValueError)      a message on the bus that does not decode into its Struct
├── ManifestError(ValueError)    a manifest that does not parse or validate (file, index, field)
└── BusError(RuntimeError)       NATS unreachable or a request that timed out
"""

from __future__ import annotations

__all__ = ["BusError", "ConfigError", "DecodeError", "ManifestError", "NodemeshError"]


class NodemeshError(Exception):
    """Root of every error nodemesh raises on purpose."""


class ConfigError(NodemeshError, ValueError):
    """Configuration that cannot be used; the message names the key."""


class DecodeError(NodemeshError, ValueError):
    """A payload that is not the Struct its subject promises."""

    def __init__(self, subject: str, type_name: str, reason: str) -> None:
        super().__init__(f"cannot decode {type_name} on {subject!r}: {reason}")
        self.subject = subject
        self.type_name = type_name
        self.reason = reason


class ManifestError(NodemeshError, ValueError):
    """A manifest document that cannot be applied.

    ``source`` is the file (or ``-``), ``index`` the 0-based document index in it, ``field`` a
    JSON-path-like location inside the document (``spec.rules[0].backendRefs``) or ``""``.
    """

    def __init__(self, source: str, index: int, field: str, reason: str) -> None:
        where = f"{source}: document {index}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.index = index
        self.field = field
        self.reason = reason


class BusError(NodemeshError, RuntimeError):
    """NATS could not be reached, or a request got no answer in time."""
