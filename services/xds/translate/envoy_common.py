"""Small helpers shared by the Envoy translators: Any packing and the ADS config source."""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

__all__ = ["ads", "pack"]


def pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def ads() -> config_source_pb2.ConfigSource:
    """Fetch over the aggregated stream (xDS v3)."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=2
    )
