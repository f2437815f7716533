"""Manifest validation, shared by the CLI (before anything is applied) and the local API server.

:func:`validate_object` checks one object: ``apiVersion``/``kind``/``metadata.name`` present, the
kind known (:mod:`nodemesh.kinds`), its group right, ``metadata`` well-formed, then Gateway API and
Cilium kinds against their published OpenAPI v3 schemas (:mod:`validation.schema`) and core
kinds with structural checks (:mod:`validation.core`). :func:`validate_documents` does the
same for documents read from files and returns :class:`nodemesh.errors.ManifestError` s naming file,
document index, field and line.
"""

from __future__ import annotations

from typing import Any

from nodemesh.errors import ManifestError
from nodemesh.kinds import Kind, by_kind
from validation.core import core_problems, metadata_problems
from validation.documents import Document, line_of, read_sources
from validation.schema import UNKNOWN_FIELD, available, schema_problems

__all__ = [
    "Document",
    "available",
    "document_warnings",
    "object_problems",
    "object_warnings",
    "read_sources",
    "validate_documents",
    "validate_object",
]


def _kind_of(obj: dict[str, Any]) -> tuple[Kind | None, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not isinstance(api_version, str):
        problems.append(("apiVersion", "required field is missing"))
    if not kind or not isinstance(kind, str):
        problems.append(("kind", "required field is missing"))
        return None, problems
    try:
        k = by_kind(kind)
    except KeyError:
        problems.append(("kind", f"unknown kind {kind!r} (nodemesh serves: see `nodemesh get --help`)"))
        return None, problems
    if isinstance(api_version, str) and api_version:
        group, _, version = api_version.rpartition("/")
        # CRD groups serve several versions with one schema (HTTPRoute v1 and v1beta1); built-in
        # kinds are served at exactly one version here.
        crd = k.group.endswith("gateway.networking.k8s.io") or k.group == "cilium.io"
        if group != k.group or (not crd and version != k.version):
            problems.append(
                ("apiVersion", f"{api_version!r} is not the API group of {kind} ({k.api_version})")
            )
    return k, problems


def object_problems(obj: dict[str, Any], strict: bool = False) -> list[tuple[str, str]]:
    """Every (field, reason) wrong with one object; empty if it is valid.

    Unknown fields count only with ``strict``; otherwise :func:`object_warnings` lists them.
    """
    kind, problems = _kind_of(obj)
    if kind is None:
        return problems + metadata_problems(obj, True)
    problems += metadata_problems(obj, kind.namespaced)
    from_schema = schema_problems(obj)
    if from_schema is None:
        return problems + core_problems(obj)
    return problems + [p for p in from_schema if strict or p[1] != UNKNOWN_FIELD]


def object_warnings(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """Fields the vendored schema does not know (errors only with ``strict``)."""
    return [p for p in schema_problems(obj) or [] if p[1] == UNKNOWN_FIELD]


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Every problem with one object as ``"field: reason"`` strings; empty if it is valid."""
    return [f"{field}: {reason}" if field else reason for field, reason in object_problems(obj)]


def _located(d: Document, problems: list[tuple[str, str]]) -> list[ManifestError]:
    out = []
    for field, reason in problems:
        where = f"items[{d.item}].{field}" if d.item >= 0 else field
        line = line_of(d.text, field) if d.text and field else None
        if line is not None:
            reason = f"{reason} (line {d.line + line})"
        out.append(ManifestError(d.source, d.index, where, reason))
    return out


def validate_documents(docs: list[Document], strict: bool = False) -> list[ManifestError]:
    """A :class:`ManifestError` per problem in ``docs``, each naming file, index, field and line."""
    return [e for d in docs for e in _located(d, object_problems(d.obj, strict))]


def document_warnings(docs: list[Document]) -> list[ManifestError]:
    """Unknown fields in ``docs`` (reported as warnings unless validation is strict)."""
    return [e for d in docs for e in _located(d, object_warnings(d.obj))]
