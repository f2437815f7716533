"""Where the CA key lives (files, never NATS) and how the trust bundle follows rotations.

Local mode (``<data-dir>/ca``): ``current`` is a symlink to ``gen-<time>-<random>/`` holding
``ca.key`` (0600) and ``ca.crt``. The first start creates a generation and links it with
``symlink`` (fails if it exists), so replicas that start together agree on one key; a rotation
writes a new generation and swaps the link atomically (``os.replace``), then deletes the old key —
the old root stays in the *bundle*, not on disk. Mounted Secret (``--ca-dir``): ``tls.key`` +
``tls.crt`` (or ``ca.key`` + ``ca.crt``); read-only, rotated by updating the Secret. Either way
replicas re-read the files periodically and notice a new root by its fingerprint.

:func:`merge_bundle` is the pure rule: the signing root first; a root that stops signing stays
``keep_for`` (the SVID TTL plus margin) longer, so every SVID it signed expires before it leaves.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import secrets
import shutil
from pathlib import Path

from cryptography import x509

from nodemesh.messages.identity import TrustBundle

from .ca import CaKeyPair, fingerprint, new_ca

__all__ = ["CaStoreError", "load_ca", "merge_bundle", "rotate_ca"]

log = logging.getLogger("nodemesh.identity.ca")
_MOUNTED = (("tls.key", "tls.crt"), ("ca.key", "ca.crt"))


class CaStoreError(Exception):
    pass


def _write_generation(root: Path, ca: CaKeyPair) -> Path:
    gen = root / f"gen-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
    gen.mkdir(mode=0o700)
    fd = os.open(gen / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(ca.key_pem)
    (gen / "ca.crt").write_text(ca.cert_pem)
    return gen


def _read_pair(key_path: Path, crt_path: Path) -> CaKeyPair:
    try:
        return CaKeyPair.from_pem(key_path.read_bytes(), crt_path.read_bytes())
    except (OSError, ValueError) as e:
        raise CaStoreError(f"cannot load CA from {key_path.parent}: {e}") from e


def load_ca(directory: str, *, mounted: bool, trust_domain: str, lifetime: dt.timedelta) -> CaKeyPair:
    """The current CA; in local mode created on first use."""
    root = Path(directory)
    if mounted:
        for key_name, crt_name in _MOUNTED:
            if (root / key_name).exists():
                return _read_pair(root / key_name, root / crt_name)
        raise CaStoreError(f"no CA in {root}: expected tls.key+tls.crt or ca.key+ca.crt")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    link = root / "current"
    if not link.exists():
        gen = _write_generation(root, new_ca(trust_domain, lifetime))
        try:
            os.symlink(gen.name, link)
            log.info("created CA %s in %s", gen.name, root)
        except FileExistsError:
            shutil.rmtree(gen)  # another replica won the first start
    target = root / os.readlink(link)  # resolve once: a concurrent rotation swaps the link
    return _read_pair(target / "ca.key", target / "ca.crt")


def rotate_ca(directory: str, *, trust_domain: str, lifetime: dt.timedelta) -> tuple[CaKeyPair, CaKeyPair]:
    """Local mode: switch to a new CA key; (old, new). The old key file is deleted."""
    root = Path(directory)
    with open(root / "rotate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old_gen = root / os.readlink(root / "current")
        old = _read_pair(old_gen / "ca.key", old_gen / "ca.crt")
        new = new_ca(trust_domain, lifetime)
        gen = _write_generation(root, new)
        tmp = root / f"current.{secrets.token_hex(4)}"
        os.symlink(gen.name, tmp)
        os.replace(tmp, root / "current")
        shutil.rmtree(old_gen, ignore_errors=True)
    log.info("rotated CA %s → %s", old.fingerprint[:16], new.fingerprint[:16])
    return old, new


def merge_bundle(
    previous: TrustBundle | None,
    signing_pem: str,
    *,
    trust_domain: str,
    now: float,
    keep_for: float,
) -> TrustBundle:
    """The bundle after ``signing_pem`` became (or stayed) the signing root at ``now``."""
    signing_fp = fingerprint(x509.load_pem_x509_certificate(signing_pem.encode()))
    roots = [signing_pem]
    keep: dict[str, float] = {}
    prev_same_domain = previous is not None and previous.trust_domain == trust_domain
    if previous is not None and prev_same_domain:
        for pem in previous.roots_pem:
            try:
                cert = x509.load_pem_x509_certificate(pem.encode())
            except ValueError:
                log.warning("dropping an unparsable root from the trust bundle")
                continue
            fp = fingerprint(cert)
            if fp == signing_fp or fp in keep:
                continue
            until = previous.keep_until.get(fp, now + keep_for)
            until = min(until, cert.not_valid_after_utc.timestamp())
            if until > now:
                roots.append(pem)
                keep[fp] = until
    revision = previous.revision if previous is not None else 0
    if previous is None or previous.roots_pem != roots or previous.trust_domain != trust_domain:
        revision += 1
    return TrustBundle(trust_domain=trust_domain, roots_pem=roots, revision=revision, keep_until=keep)
