"""Certificate and key parameters of a shared instance.

What a JSON Schema cannot say about ``ssl_crt``, ``ssl_key``, ``ssl_ca_crt``,
``ssl_proxy_ca_crt`` and ``health-check-failover-ssl-proxy-ca-crt``:

* certificate fields hold one or more PEM certificates and nothing else that
  looks like PEM (a private key pasted into a certificate field is refused
  rather than published further);
* ``ssl_crt`` and ``ssl_key`` come together, the key is a PEM private key
  without passphrase, and it belongs to the first (leaf) certificate of
  ``ssl_crt`` -- public keys are compared as DER SubjectPublicKeyInfo;
* ``ssl_ca_crt`` only makes sense with ``ssl_crt`` and ``ssl_key``.

Only string values are looked at: the schema check reports wrong types, and a
non-string is neither "given" nor "missing" here, so no second error is made up
about its partner field. A field is empty only when it is exactly ``""``;
whitespace alone is not a certificate and is refused.

Messages name the field and the problem, never the content: PEM text is long
and ``ssl_key`` is a secret. Everything here is pure (``cryptography`` only,
no subprocess, no files) and never raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "CERTIFICATE_FIELDS",
    "MAX_PEM_CHARS",
    "MAX_RSA_BITS",
    "check_tls_parameters",
    "expiry_warnings",
    "verify_without_ca",
]

#: Fields that hold certificates a backend is checked against.
CERTIFICATE_FIELDS: tuple[str, ...] = (
    "ssl_proxy_ca_crt",
    "health-check-failover-ssl-proxy-ca-crt",
)

#: Longer values are refused before parsing. The whole public CA bundle of a
#: typical distribution is about a quarter of this.
MAX_PEM_CHARS = 1 << 20

#: Larger RSA keys are refused (OpenSSL will not use them either).
MAX_RSA_BITS = 16384

# A PEM "BEGIN" line's label. Bounded by the next '-' or line end, so scanning
# hostile input stays linear.
_BEGIN = re.compile(rb"-----BEGIN ([^\r\n-]{0,64})-----")
# The labels cryptography's load_pem_x509_certificates reads.
_CERT_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE"})
# Blocks tolerated beside the private key in ssl_key (`openssl ecparam -genkey`
# writes the curve parameters before the key).
_KEY_COMPANION_LABELS = frozenset({b"EC PARAMETERS"})
_ENCRYPTED_MARKERS = (b"ENCRYPTED PRIVATE KEY", b"Proc-Type: 4,ENCRYPTED")

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo

Outcome = tuple[Any, str | None]


def _text(parameters: Mapping[str, Any], name: str) -> str | None:
    """The field as a string ("" when absent), or None when it is not a string."""
    try:
        value = parameters.get(name, "")
    except Exception:  # a hostile Mapping; treat the field as unreadable
        return None
    return value if isinstance(value, str) else None


def _pem_bytes(text: str) -> bytes:
    # PEM is ASCII; anything else can only sit in comments, and lone
    # surrogates must not make encoding raise.
    return text.encode("utf-8", "replace")


def _labels(data: bytes) -> list[bytes]:
    return [label.strip() for label in _BEGIN.findall(data)]


def _is_key_label(label: bytes) -> bool:
    return label.endswith(b"PRIVATE KEY")


def _load_certificates(name: str, text: str) -> Outcome:
    """(certificates, None) or (None, error) for a field of PEM certificates."""
    not_pem = f"{name}: is not a PEM certificate"
    if len(text) > MAX_PEM_CHARS:
        return None, f"{name}: is too long (more than {MAX_PEM_CHARS} characters)"
    data = _pem_bytes(text)
    labels = _labels(data)
    if any(_is_key_label(label) for label in labels):
        return None, f"{name}: holds a private key; only certificates belong here"
    if not labels or any(label not in _CERT_LABELS for label in labels):
        return None, not_pem
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except Exception:
        return None, not_pem
    # cryptography skips a block it cannot delimit (a truncated last
    # certificate); every BEGIN must have given a certificate.
    if len(certificates) != len(labels):
        return None, not_pem
    return certificates, None


def _load_private_key(text: str) -> Outcome:
    """(key, None) or (None, error) for ``ssl_key``."""
    name = "ssl_key"
    not_key = f"{name}: is not a PEM private key"
    if len(text) > MAX_PEM_CHARS:
        return None, f"{name}: is too long (more than {MAX_PEM_CHARS} characters)"
    data = _pem_bytes(text)
    labels = _labels(data)
    keys = [label for label in labels if _is_key_label(label)]
    others = [
        label for label in labels
        if not _is_key_label(label) and label not in _KEY_COMPANION_LABELS
    ]
    if not keys:
        if any(label in _CERT_LABELS for label in labels):
            return None, f"{name}: holds a certificate, not a private key"
        return None, not_key
    if any(label in _CERT_LABELS for label in others):
        return None, f"{name}: also holds a certificate; certificates belong in ssl_crt"
    if len(keys) > 1 or others:
        return None, f"{name}: must hold exactly one PEM private key"
    encrypted = f"{name}: is encrypted; a key without a passphrase is needed"
    if any(marker in data for marker in _ENCRYPTED_MARKERS):
        return None, encrypted
    try:
        # OpenSSL's own RSA check tests p and q for primality: about 4 s for
        # an 8192-bit key and far more above, on input a customer controls.
        # The arithmetic check below is what matters and costs milliseconds.
        key = serialization.load_pem_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=True
        )
    except TypeError:  # cryptography's way of saying "a password is needed"
        return None, encrypted
    except Exception:
        return None, not_key
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size > MAX_RSA_BITS:
            return None, f"{name}: RSA keys over {MAX_RSA_BITS} bits are not accepted"
        if not _rsa_consistent(key):
            return None, f"{name}: is not a consistent RSA private key"
    return key, None


def _rsa_consistent(key: rsa.RSAPrivateKey) -> bool:
    """The RSA private values agree with each other and with the modulus.

    What OpenSSL's check does, minus proving p and q prime. A key with
    composite factors could only break its own owner's TLS: the front-end
    matches keys to certificates by public key, which is checked separately.
    """
    try:
        numbers = key.private_numbers()
        p, q, d = numbers.p, numbers.q, numbers.d
        n, e = numbers.public_numbers.n, numbers.public_numbers.e
        return (
            p > 2 and q > 2 and p != q and p * q == n and e > 1
            and (d * e) % (p - 1) == 1 and (d * e) % (q - 1) == 1
            and numbers.dmp1 == d % (p - 1) and numbers.dmq1 == d % (q - 1)
            and (numbers.iqmp * q) % p == 1
        )
    except Exception:
        return False


def _public_der(subject: Any) -> bytes | None:
    """DER SubjectPublicKeyInfo of a certificate or private key, None if unsupported."""
    try:
        return subject.public_key().public_bytes(_DER, _SPKI)
    except Exception:
        return None


def _check(parameters: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    crt = _text(parameters, "ssl_crt")
    key = _text(parameters, "ssl_key")
    ca = _text(parameters, "ssl_ca_crt")

    leaf = None
    if crt:
        certificates, error = _load_certificates("ssl_crt", crt)
        if error:
            errors.append(error)
        else:
            leaf = certificates[0]
    elif crt == "" and key:
        errors.append("ssl_crt: is needed when ssl_key is given")

    private_key = None
    if key:
        private_key, error = _load_private_key(key)
        if error:
            errors.append(error)
    elif key == "" and crt:
        errors.append("ssl_key: is needed when ssl_crt is given")

    if leaf is not None and private_key is not None:
        leaf_public = _public_der(leaf)
        if leaf_public is None:
            errors.append("ssl_crt: the certificate's key type is not supported")
        elif _public_der(private_key) != leaf_public:
            errors.append("ssl_key: does not match the certificate in ssl_crt")

    if ca:
        if crt == "" or key == "":
            errors.append("ssl_ca_crt: needs both ssl_crt and ssl_key")
        _, error = _load_certificates("ssl_ca_crt", ca)
        if error:
            errors.append(error)

    for name in CERTIFICATE_FIELDS:
        value = _text(parameters, name)
        if value:
            _, error = _load_certificates(name, value)
            if error:
                errors.append(error)
    return errors


#: "verify the backend" switch -> (its CA field, what that CA verifies)
VERIFY_SWITCHES: dict[str, tuple[str, str]] = {
    "ssl-proxy-verify": ("ssl_proxy_ca_crt", "the backend's CA certificate"),
    "health-check-failover-ssl-proxy-verify": (
        "health-check-failover-ssl-proxy-ca-crt",
        "the failover backend's CA certificate",
    ),
}


def verify_without_ca(parameters: Mapping[str, Any], skip: set[str]) -> list[str]:
    """A switch asking to verify a backend, without the CA to verify it with:
    refused rather than left to whatever the CDN would then trust. Fields in
    ``skip`` are refused already and say nothing here."""
    errors: list[str] = []
    for switch, (field, what) in VERIFY_SWITCHES.items():
        if switch in skip or field in skip or _text(parameters, switch) != "true":
            continue
        if field not in parameters:
            state = "missing"
        elif _text(parameters, field) == "":
            state = "empty"
        else:
            continue
        errors.append(f'{switch}: "true" needs {field} ({what}), which is {state}')
    return errors


def check_tls_parameters(parameters: Mapping[str, Any]) -> list[str]:
    """Errors in the certificate and key parameters; ``[]`` when they are usable."""
    try:
        return _check(parameters)
    except Exception:  # pragma: no cover - a safety net; refusing is the safe side
        return ["ssl_crt: the certificate parameters could not be checked"]


def expiry_warnings(parameters: Mapping[str, Any], now: datetime) -> list[str]:
    """Warnings about the validity period of the leaf certificate of ``ssl_crt``.

    ``now`` without a time zone is taken as UTC. A value that does not parse
    gives no warning here: :func:`check_tls_parameters` reports it.
    """
    try:
        crt = _text(parameters, "ssl_crt")
        if not crt:
            return []
        certificates, error = _load_certificates("ssl_crt", crt)
        if error:
            return []
        leaf = certificates[0]
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        not_after = leaf.not_valid_after_utc
        not_before = leaf.not_valid_before_utc
        if now > not_after:
            return [f"ssl_crt: expired on {not_after.date().isoformat()}"]
        if now < not_before:
            return [f"ssl_crt: not yet valid; valid from {not_before.date().isoformat()}"]
        return []
    except Exception:  # pragma: no cover - a warning is never worth a crash
        return []
