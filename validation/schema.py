"""Validate custom resources against their published OpenAPI v3 schemas (vendored in validation/schemas).

The vendored JSON is the CRD's ``openAPIV3Schema`` (descriptions removed). Before handing it to
``jsonschema`` (Draft 4, the dialect OpenAPI 3.0 schemas are written in) three Kubernetes
extensions are translated:

* ``nullable: true`` → the type also admits ``null``;
* ``x-kubernetes-int-or-string: true`` → integer or string;
* an object with ``properties`` and without ``x-kubernetes-preserve-unknown-fields`` reports
  unknown fields (reason :data:`UNKNOWN_FIELD`). Callers decide: a warning by default (the vendored
  schemas can be older than a manifest's Gateway API version, whose new fields must not be
  refused), an error with ``--validate=strict`` (the API server's strict field validation).

CEL rules (``x-kubernetes-validations``) are not evaluated: there is no CEL library here. The
schemas still carry them, so a future evaluator can use them. ``metadata`` is checked by
:mod:`validation.core`, not by the CRD schema (which only says ``type: object``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema

__all__ = ["UNKNOWN_FIELD", "available", "schema_problems"]

_SKIP_KEYS = {"x-kubernetes-validations", "description"}
_STRICT = "x-nodemesh-strict"
UNKNOWN_FIELD = "unknown field"


def _prepare(node: Any, structural: bool = True) -> Any:
    """Translate the Kubernetes extensions; ``structural`` is False inside oneOf/anyOf/allOf/not,
    whose ``properties`` only constrain values (Kubernetes' structural-schema rule), so unknown
    fields are never judged there."""
    if isinstance(node, list):
        return [_prepare(n, structural) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SKIP_KEYS:
            continue
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {k: _prepare(v, structural) for k, v in value.items()}
        else:
            out[key] = _prepare(value, structural and key not in ("oneOf", "anyOf", "allOf", "not"))
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields", False)
    if structural and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
        out[_STRICT] = True  # marks the rule as ours: an unknown field, reported separately
    return out


@functools.cache
def _vendored() -> frozenset[str]:
    """The kinds with a vendored schema: a manifest's ``kind`` is looked up here, never used as a
    path (``../x``, a NUL byte or a 300-character value must not reach the filesystem)."""
    try:
        files = resources.files("validation.schemas").iterdir()
        return frozenset(f.name.removesuffix(".json") for f in files if f.name.endswith(".json"))
    except (FileNotFoundError, ModuleNotFoundError):
        return frozenset()


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator | None:
    if kind not in _vendored():
        return None
    text = resources.files("validation.schemas").joinpath(f"{kind}.json").read_text()
    schema = _prepare(json.loads(text))
    schema.pop("$comment", None)
    # metadata is validated separately (core.py) and removed from what the schema sees.
    if "required" in schema:
        schema["required"] = [r for r in schema["required"] if r != "metadata"] or None
        if schema["required"] is None:
            del schema["required"]
    cls = jsonschema.Draft4Validator
    return cls(schema)


def available(kind: str) -> bool:
    """Whether a vendored schema exists for ``kind``."""
    return _validator(kind) is not None


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain(err: jsonschema.ValidationError) -> list[tuple[str, str]]:
    path = _path(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = set((err.schema.get("properties") or {}).keys())
        extra = sorted(k for k in err.instance if k not in known)
        return [(_join(path, k), UNKNOWN_FIELD) for k in extra] or [(path, _short(err.message))]
    if (
        err.validator == "required"
        and isinstance(err.validator_value, list)
        and isinstance(err.instance, dict)
    ):
        missing = [k for k in err.validator_value if k not in err.instance]
        return [(_join(path, k), "required field is missing") for k in missing]
    if err.validator in ("anyOf", "oneOf") and err.context:
        best = jsonschema.exceptions.best_match(err.context)
        if best is not None and best.validator not in ("type",):
            return [(_path(best.absolute_path) or path, _short(best.message))]
    return [(path, _short(err.message))]


def schema_problems(obj: dict[str, Any]) -> list[tuple[str, str]] | None:
    """(field, reason) for each schema violation; None if no schema is vendored for the kind."""
    validator = _validator(str(obj.get("kind", "")))
    if validator is None:
        return None
    # metadata is checked by core.py; status is written by controllers through the status
    # subresource (and ignored on apply), so only what a user sends is validated here.
    body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    problems: list[tuple[str, str]] = []
    for err in sorted(validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path]):
        problems.extend(_explain(err))
    return problems
