"""Attacks on the SVID checks (issue 12: "check_leaf ignores KeyUsage — a leaf with keyCertSign
passes a full handshake; the SPIFFE-ID regex accepts a trailing newline"). The full-handshake
versions run in tests/authd/test_refusals.py (reason ``key-usage`` on both ends); here the check
itself, with certificates from a real CA."""

from __future__ import annotations

import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.authd.spiffe import AuthFailure, check_leaf, identity_from_spiffe_id
from testkit.spiffe_ca import SpiffeCA

TD = "cluster.local"


def _der(chain_pem: str) -> bytes:
    return x509.load_pem_x509_certificates(chain_pem.encode())[0].public_bytes(serialization.Encoding.DER)


def test_a_leaf_that_may_sign_certificates_is_refused() -> None:
    ca, now = SpiffeCA(TD), time.time()
    assert check_leaf(_der(ca.svid(7)[0]), TD, 7, now).identity == 7  # the allowed twin
    with pytest.raises(AuthFailure) as e:
        check_leaf(_der(ca.svid(7, key_cert_sign=True)[0]), TD, 7, now)
    assert e.value.reason == "key-usage"


def test_a_spiffe_id_with_a_trailing_newline_is_not_an_identity() -> None:
    assert identity_from_spiffe_id(f"spiffe://{TD}/identity/42", TD) == 42
    assert identity_from_spiffe_id(f"spiffe://{TD}/identity/42\n", TD) is None
    ca, now = SpiffeCA(TD), time.time()
    with pytest.raises(AuthFailure) as e:
        check_leaf(_der(ca.svid(42, uris=[f"spiffe://{TD}/identity/42\n"])[0]), TD, 42, now)
    assert e.value.reason == "wrong-san"
