"""The conformance corpus as data: cases, placeholders, generated certificates (README §1-§2)."""

from __future__ import annotations

import base64
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import certs

__all__ = ["Case", "Generated", "corpus_dir", "load_case", "load_index"]

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "gateway"


def corpus_dir(path: str | None = None) -> Path:
    """The corpus: ``path``, else ``$NODEMESH_CONFORMANCE_DIR``, else ``../shared/conformance/gateway``."""
    return Path(path or os.environ.get("NODEMESH_CONFORMANCE_DIR") or DEFAULT_DIR)


@dataclass
class Case:
    name: str
    feature: str
    raw: dict[str, Any]
    manifests: list[dict[str, Any]]
    backends: list[dict[str, Any]]
    generated: list[dict[str, Any]]
    status_expectations: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    distribution: Any
    repeated_check: Any
    provisional: bool = False
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def phases(self) -> list[int]:
        ps = {int(x.get("phase", 1)) for x in self.status_expectations + self.requests}
        ps |= {int(a.get("before_phase", 1)) for a in self.actions}
        return sorted(ps or {1})


def load_index(root: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load((root / "index.yaml").read_text())
    return list(data.get("cases") or [])


def _subst(text: str, class_name: str, controller: str, the_uuid: str) -> str:
    return (
        text.replace("{GATEWAY_CLASS_NAME}", class_name)
        .replace("{CONTROLLER_NAME}", controller)
        .replace("{uuid}", the_uuid)
    )


def load_case(root: Path, name: str, class_name: str, controller: str) -> Case:
    the_uuid = str(uuid.uuid4())
    text = _subst((root / "cases" / f"{name}.yaml").read_text(), class_name, controller, the_uuid)
    raw = yaml.safe_load(text)
    up = raw.get("upstream") or {}
    return Case(
        name=raw["name"],
        feature=raw.get("feature", ""),
        raw=raw,
        manifests=list(raw.get("manifests") or []),
        backends=list(raw.get("backends") or []),
        generated=list(raw.get("generated_objects") or []),
        status_expectations=list(raw.get("status_expectations") or []),
        requests=list(raw.get("requests") or []),
        actions=list(raw.get("actions") or []),
        distribution=raw.get("distribution"),
        repeated_check=raw.get("repeated_check"),
        provisional=bool(up.get("provisional")),
        uuid=the_uuid,
    )


class Generated:
    """The certificates of one run (upstream creates them once in Setup), as Kubernetes objects."""

    def __init__(self) -> None:
        self._pairs: dict[str, certs.KeyPair] = {}
        (self.ca_pair, self._ca_key, self._ca_cert) = certs.make_ca()

    def pair(self, ns: str, name: str, description: str = "") -> certs.KeyPair:
        key = f"{ns}/{name}"
        if key not in self._pairs:
            if "client certificate signed by the CA" in description:
                cn = re.findall(r"CN ([\w.-]+)", description) or [name]
                self._pairs[key] = certs.client_signed(self._ca_key, self._ca_cert, cn[0])
            elif "signed by the CA" in description or name == "tls-passthrough-checks-certificate":
                hosts = re.findall(r"DNS SAN ([\w.*-]+)", description) or ["abc.example.com"]
                self._pairs[key] = certs.ca_signed(self._ca_key, self._ca_cert, hosts)
            elif name == "tls-validity-checks-certificate" or "*.wildcard.org" in description:
                self._pairs[key] = certs.self_signed(["*", "*.org", "*.wildcard.org"])
            elif name == "tls-checks-certificate":
                self._pairs[key] = certs.self_signed(["abc.example.com", "*.example.com"])
            else:
                self._pairs[key] = certs.self_signed(["*"])
        return self._pairs[key]

    def objects(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in entries:
            ns, name = e.get("namespace", ""), e.get("name", "")
            if e.get("kind") == "ConfigMap":
                out.append(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"namespace": ns, "name": name},
                        "data": {"ca.crt": self.ca_pair[0].decode()},
                    }
                )
            else:
                out.append(certs.tls_secret(ns, name, self.pair(ns, name, str(e.get("certificate", "")))))
        return out

    def key_pair(self, ref: str) -> tuple[bytes, bytes] | None:
        """The certificate and key of ``Secret ns/name`` (a client certificate to present)."""
        m = re.search(r"Secret ([\w.-]+)/([\w.-]+)", ref or "")
        return self.pair(m.group(1), m.group(2)) if m else None

    def trusted_pem(self, ref: str) -> bytes:
        """The PEM a client trusts for ``Secret ns/name (tls.crt)`` or ``ConfigMap ns/name ...``."""
        m = re.search(r"(Secret|ConfigMap) ([\w.-]+)/([\w.-]+)", ref or "")
        if not m:
            return b""
        if m.group(1) == "ConfigMap":
            return self.ca_pair[0]
        return self.pair(m.group(2), m.group(3))[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
