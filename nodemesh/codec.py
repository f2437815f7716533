"""Encoding of bus messages: msgpack via msgspec, one cached encoder and one decoder per type.

Schema evolution rules for every Struct in :mod:`nodemesh.messages` (see docs/architecture.md):
new fields get defaults; a field's name, type or tag never changes; unknown fields are ignored
(no ``forbid_unknown_fields`` on wire types) so a rolling upgrade can mix versions; an incompatible
change gets a new Struct on a new subject.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

import msgspec

from nodemesh.errors import DecodeError

__all__ = ["MAX_MESSAGE_BYTES", "decode", "encode"]

T = TypeVar("T")

#: Messages above this size are refused before decoding (NATS' default max_payload is 1 MiB).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()


def encode(msg: Any) -> bytes:
    """Encode a Struct (or any msgspec-supported value) to msgpack."""
    return _encoder.encode(msg)


@cache
def _decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(tp)


def decode(data: bytes, tp: type[T], *, subject: str = "") -> T:
    """Decode ``data`` as ``tp``; any failure — oversized, corrupt, wrong shape — is a DecodeError."""
    name = getattr(tp, "__name__", repr(tp))
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(subject, name, f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return _decoder(tp).decode(data)  # type: ignore[arg-type,no-any-return]
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise DecodeError(subject, name, str(e)) from e
