"""cdnreq.validate.tls: certificate and key parameters, checked with real PEM from trustme."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from cryptography.x509.oid import NameOID

from cdnreq.validate.tls import (
    MAX_PEM_CHARS,
    MAX_RSA_BITS,
    check_tls_parameters,
    expiry_warnings,
)

PROXY_FIELDS = ("ssl_proxy_ca_crt", "health-check-failover-ssl-proxy-ca-crt")


# ---------------------------------------------------------------- material


def _pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _self_signed(key, not_before: datetime, not_after: datetime, algorithm=None) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fixed.example")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(4242)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Pair:
    """A leaf certificate (PEM, leaf first then its CA) and its key (PEM)."""

    def __init__(self, key_type: trustme.KeyType):
        self.ca = trustme.CA(key_type=key_type)
        leaf = self.ca.issue_cert("www.example.com", key_type=key_type)
        self.leaf_crt = leaf.cert_chain_pems[0].bytes().decode()
        self.chain = "".join(p.bytes().decode() for p in leaf.cert_chain_pems)
        self.key = leaf.private_key_pem.bytes().decode()
        self.key_obj = serialization.load_pem_private_key(self.key.encode(), None)
        self.ca_crt = self.ca.cert_pem.bytes().decode()


@pytest.fixture(scope="module")
def rsa() -> Pair:
    return Pair(trustme.KeyType.RSA)


@pytest.fixture(scope="module")
def ec() -> Pair:
    return Pair(trustme.KeyType.ECDSA)


@pytest.fixture(scope="module")
def other() -> Pair:
    return Pair(trustme.KeyType.RSA)


@pytest.fixture(scope="module")
def ed() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.now(timezone.utc)
    return _self_signed(key, now - timedelta(days=1), now + timedelta(days=30)), _pem_key(key)


def _encrypted(pair: Pair, fmt: serialization.PrivateFormat) -> str:
    return pair.key_obj.private_bytes(
        serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(b"secret")
    ).decode()


def _body_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM text (what must never leak into a message)."""
    return [
        line for line in pem.splitlines()
        if line and not line.startswith("-----") and ":" not in line and len(line) >= 16
    ]


GARBAGE_1MB = "x" * 1_000_000
HEADER_GARBAGE = "-----BEGIN CERTIFICATE-----\n" + "QUJD" * 100 + "\n-----END CERTIFICATE-----\n"
KEY_HEADER_GARBAGE = "-----BEGIN PRIVATE KEY-----\n" + "QUJD" * 100 + "\n-----END PRIVATE KEY-----\n"


# ---------------------------------------------------------------- the table

NOT_CRT = "ssl_crt: is not a PEM certificate"
NOT_KEY = "ssl_key: is not a PEM private key"
MISMATCH = "ssl_key: does not match the certificate in ssl_crt"
ENCRYPTED = "ssl_key: is encrypted; a key without a passphrase is needed"


# Each case: id, a function of the fixtures giving the parameters, the errors.
CASES = [
    ("nothing", lambda f: {}, []),
    ("all empty", lambda f: dict.fromkeys(
        ["ssl_crt", "ssl_key", "ssl_ca_crt", *PROXY_FIELDS], ""), []),
    ("rsa pair", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_key": f.rsa.key}, []),
    ("rsa pair, full chain", lambda f: {"ssl_crt": f.rsa.chain, "ssl_key": f.rsa.key}, []),
    ("ec pair", lambda f: {"ssl_crt": f.ec.leaf_crt, "ssl_key": f.ec.key}, []),
    ("ed25519 pair", lambda f: {"ssl_crt": f.ed[0], "ssl_key": f.ed[1]}, []),
    ("traditional rsa key", lambda f: {
        "ssl_crt": f.rsa.leaf_crt,
        "ssl_key": f.rsa.key_obj.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()).decode(),
    }, []),
    ("pair with ca", lambda f: {
        "ssl_crt": f.rsa.leaf_crt, "ssl_key": f.rsa.key, "ssl_ca_crt": f.rsa.ca_crt}, []),
    ("pair with ca bundle of two", lambda f: {
        "ssl_crt": f.rsa.leaf_crt, "ssl_key": f.rsa.key,
        "ssl_ca_crt": f.rsa.ca_crt + f.other.ca_crt}, []),
    ("key of another cert", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_key": f.other.key},
     [MISMATCH]),
    ("ec key for rsa cert", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_key": f.ec.key},
     [MISMATCH]),
    ("key of the CA, not of the leaf", lambda f: {
        "ssl_crt": f.rsa.chain,
        "ssl_key": _pem_key(serialization.load_pem_private_key(
            f.rsa.ca.private_key_pem.bytes(), None)),
    }, [MISMATCH]),
    ("chain with the CA first", lambda f: {
        "ssl_crt": f.rsa.ca_crt + f.rsa.leaf_crt, "ssl_key": f.rsa.key}, [MISMATCH]),
    ("encrypted pkcs8 key", lambda f: {
        "ssl_crt": f.rsa.leaf_crt,
        "ssl_key": _encrypted(f.rsa, serialization.PrivateFormat.PKCS8)}, [ENCRYPTED]),
    ("encrypted traditional key", lambda f: {
        "ssl_crt": f.ec.leaf_crt,
        "ssl_key": _encrypted(f.ec, serialization.PrivateFormat.TraditionalOpenSSL)},
     [ENCRYPTED]),
    ("only crt", lambda f: {"ssl_crt": f.rsa.leaf_crt},
     ["ssl_key: is needed when ssl_crt is given"]),
    ("only crt, key empty", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_key": ""},
     ["ssl_key: is needed when ssl_crt is given"]),
    ("only key", lambda f: {"ssl_key": f.rsa.key},
     ["ssl_crt: is needed when ssl_key is given"]),
    ("ca without crt and key", lambda f: {"ssl_ca_crt": f.rsa.ca_crt},
     ["ssl_ca_crt: needs both ssl_crt and ssl_key"]),
    ("ca with crt only", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_ca_crt": f.rsa.ca_crt},
     ["ssl_key: is needed when ssl_crt is given", "ssl_ca_crt: needs both ssl_crt and ssl_key"]),
    ("ca garbage without crt and key", lambda f: {"ssl_ca_crt": "nope"},
     ["ssl_ca_crt: needs both ssl_crt and ssl_key", "ssl_ca_crt: is not a PEM certificate"]),
    ("garbage crt", lambda f: {"ssl_crt": "hello", "ssl_key": f.rsa.key}, [NOT_CRT]),
    ("garbage key", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_key": "hello"}, [NOT_KEY]),
    ("whitespace is not empty", lambda f: {"ssl_crt": " \n", "ssl_key": ""},
     [NOT_CRT, "ssl_key: is needed when ssl_crt is given"]),
    ("pem header, garbage body (crt)", lambda f: {"ssl_crt": HEADER_GARBAGE, "ssl_key": f.rsa.key},
     [NOT_CRT]),
    ("pem header, garbage body (key)", lambda f: {
        "ssl_crt": f.rsa.leaf_crt, "ssl_key": KEY_HEADER_GARBAGE}, [NOT_KEY]),
    ("truncated second certificate", lambda f: {
        "ssl_crt": f.rsa.leaf_crt + f.rsa.ca_crt[: len(f.rsa.ca_crt) // 2], "ssl_key": f.rsa.key},
     [NOT_CRT]),
    ("certificate in the key field", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_key": f.rsa.leaf_crt},
     ["ssl_key: holds a certificate, not a private key"]),
    ("key in the certificate field", lambda f: {"ssl_crt": f.rsa.key, "ssl_key": f.rsa.key},
     ["ssl_crt: holds a private key; only certificates belong here"]),
    ("certificate and key in the certificate field", lambda f: {
        "ssl_crt": f.rsa.leaf_crt + f.rsa.key, "ssl_key": f.rsa.key},
     ["ssl_crt: holds a private key; only certificates belong here"]),
    ("certificate and key in the key field", lambda f: {
        "ssl_crt": f.rsa.leaf_crt, "ssl_key": f.rsa.leaf_crt + f.rsa.key},
     ["ssl_key: also holds a certificate; certificates belong in ssl_crt"]),
    ("two keys", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_key": f.rsa.key + f.other.key},
     ["ssl_key: must hold exactly one PEM private key"]),
    ("openssl ecparam output", lambda f: {
        "ssl_crt": f.ec.leaf_crt,
        "ssl_key": "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
        + f.ec.key_obj.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()).decode(),
    }, []),
    ("text around the certificates", lambda f: {
        "ssl_crt": "Bag Attributes\n    friendlyName: www \u00e9\nsubject=/CN=www\n" + f.rsa.leaf_crt
        + "\ntrailing words\n",
        "ssl_key": f.rsa.key}, []),
    ("CRLF line ends", lambda f: {
        "ssl_crt": f.rsa.leaf_crt.replace("\n", "\r\n"),
        "ssl_key": f.rsa.key.replace("\n", "\r\n")}, []),
    ("ca in ssl_ca_crt is garbage", lambda f: {
        "ssl_crt": f.rsa.leaf_crt, "ssl_key": f.rsa.key, "ssl_ca_crt": HEADER_GARBAGE},
     ["ssl_ca_crt: is not a PEM certificate"]),
    ("proxy ca ok", lambda f: {"ssl_proxy_ca_crt": f.rsa.ca_crt}, []),
    ("proxy ca bundle of two", lambda f: {
        "ssl_proxy_ca_crt": f.rsa.ca_crt + f.ec.ca_crt,
        "health-check-failover-ssl-proxy-ca-crt": f.ec.ca_crt + f.rsa.ca_crt}, []),
    ("proxy ca garbage", lambda f: {
        "ssl_proxy_ca_crt": "garbage", "health-check-failover-ssl-proxy-ca-crt": HEADER_GARBAGE},
     ["ssl_proxy_ca_crt: is not a PEM certificate",
      "health-check-failover-ssl-proxy-ca-crt: is not a PEM certificate"]),
    ("proxy ca holding a key", lambda f: {"ssl_proxy_ca_crt": f.rsa.key},
     ["ssl_proxy_ca_crt: holds a private key; only certificates belong here"]),
    ("non-strings are ignored", lambda f: {
        "ssl_crt": 12, "ssl_key": None, "ssl_ca_crt": ["x"], "ssl_proxy_ca_crt": {"a": 1},
        "health-check-failover-ssl-proxy-ca-crt": b"garbage"}, []),
    ("non-string partner makes no extra error", lambda f: {"ssl_crt": f.rsa.leaf_crt, "ssl_key": 5},
     []),
    ("several problems at once, in field order", lambda f: {
        "ssl_crt": "x", "ssl_key": "y", "ssl_ca_crt": "z", "ssl_proxy_ca_crt": "w"},
     [NOT_CRT, NOT_KEY, "ssl_ca_crt: is not a PEM certificate",
      "ssl_proxy_ca_crt: is not a PEM certificate"]),
]


class Fixtures:
    def __init__(self, rsa, ec, other, ed):
        self.rsa, self.ec, self.other, self.ed = rsa, ec, other, ed


@pytest.fixture(scope="module")
def f(rsa, ec, other, ed) -> Fixtures:
    return Fixtures(rsa, ec, other, ed)


@pytest.mark.parametrize("make, errors", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table(f, make, errors):
    assert check_tls_parameters(make(f)) == errors


# ---------------------------------------------------------------- hostile input


HOSTILE = [
    GARBAGE_1MB,
    "-----BEGIN CERTIFICATE-----\n" + "A" * 1_000_000 + "\n-----END CERTIFICATE-----\n",
    "-----BEGIN PRIVATE KEY-----\n" + "A" * 1_000_000 + "\n-----END PRIVATE KEY-----\n",
    "-----BEGIN " * 80_000,
    "-----BEGIN CERTIFICATE-----\n" * 30_000,
    "x" * (MAX_PEM_CHARS + 1),
    "\x00\x01\x02\x1b[31m\r\n\t\x7f",
    "\ud800\udfff",
    "-----BEGIN CERTIFICATE-----\n\x00\x00\n-----END CERTIFICATE-----\n",
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\n\n-----END ENCRYPTED PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n-----END RSA PRIVATE KEY-----\n",
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n",
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_are_refused_quickly_and_never_raise(value):
    fields = ["ssl_crt", "ssl_key", "ssl_ca_crt", *PROXY_FIELDS]
    started = time.perf_counter()
    errors = check_tls_parameters(dict.fromkeys(fields, value))
    warnings = expiry_warnings(dict.fromkeys(fields, value), datetime.now(timezone.utc))
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    assert warnings == []
    assert errors
    assert {e.split(":", 1)[0] for e in errors} == set(fields)
    assert all(len(e) < 200 and value[:20] not in e for e in errors if len(value) >= 20)


def test_one_megabyte_of_garbage_is_refused_quickly():
    started = time.perf_counter()
    assert check_tls_parameters({"ssl_proxy_ca_crt": GARBAGE_1MB}) == [
        "ssl_proxy_ca_crt: is not a PEM certificate"
    ]
    assert time.perf_counter() - started < 0.5


def test_too_long_is_refused_before_parsing(rsa):
    padded = rsa.ca_crt + "\n" * MAX_PEM_CHARS
    assert check_tls_parameters({"ssl_proxy_ca_crt": padded}) == [
        f"ssl_proxy_ca_crt: is too long (more than {MAX_PEM_CHARS} characters)"
    ]


class _ExplodingMapping(dict):
    def get(self, *args, **kwargs):
        raise RuntimeError("boom")


def test_an_unreadable_mapping_does_not_raise():
    assert check_tls_parameters(_ExplodingMapping()) == []
    assert expiry_warnings(_ExplodingMapping(), datetime.now(timezone.utc)) == []


def test_no_key_material_in_any_message(f):
    keys = [
        f.rsa.key, f.ec.key, f.other.key, f.ed[1],
        _encrypted(f.rsa, serialization.PrivateFormat.PKCS8),
        _encrypted(f.ec, serialization.PrivateFormat.TraditionalOpenSSL),
    ]
    secret_lines = [line for key in keys for line in _body_lines(key)]
    assert secret_lines
    messages: list[str] = []
    for _case_id, make, _ in CASES:
        messages += check_tls_parameters(make(f))
        messages += expiry_warnings(make(f), datetime.now(timezone.utc))
    # Every key pasted into every field, alone and mixed with a certificate.
    for key in keys:
        for field in ["ssl_crt", "ssl_key", "ssl_ca_crt", *PROXY_FIELDS]:
            for value in (key, f.rsa.leaf_crt + key, key[: len(key) // 2]):
                messages += check_tls_parameters({field: value})
        messages += check_tls_parameters({"ssl_crt": f.ec.leaf_crt, "ssl_key": key})
    assert messages
    text = "\n".join(messages)
    for line in secret_lines:
        assert line not in text
        assert line[:16] not in text
    assert "BEGIN" not in text and "PRIVATE KEY-----" not in text


# ---------------------------------------------------------------- expiry


@pytest.fixture(scope="module")
def fixed_window() -> dict[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    crt = _self_signed(
        key,
        datetime(2024, 2, 1, 8, 0, tzinfo=timezone.utc),
        datetime(2025, 1, 31, 23, 30, tzinfo=timezone.utc),
    )
    return {"ssl_crt": crt, "ssl_key": _pem_key(key)}


@pytest.mark.parametrize(
    "now, warnings",
    [
        (datetime(2024, 6, 1, tzinfo=timezone.utc), []),
        (datetime(2025, 1, 31, 23, 30, tzinfo=timezone.utc), []),
        (datetime(2025, 1, 31, 23, 31, tzinfo=timezone.utc), ["ssl_crt: expired on 2025-01-31"]),
        (datetime(2030, 1, 1, tzinfo=timezone.utc), ["ssl_crt: expired on 2025-01-31"]),
        (datetime(2024, 2, 1, 7, 59, tzinfo=timezone.utc),
         ["ssl_crt: not yet valid; valid from 2024-02-01"]),
        (datetime(2020, 1, 1), ["ssl_crt: not yet valid; valid from 2024-02-01"]),  # naive = UTC
        (datetime(2025, 2, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))), []),  # 23:00 UTC
        (datetime(2025, 2, 1, 2, 0, tzinfo=timezone(timedelta(hours=2))),
         ["ssl_crt: expired on 2025-01-31"]),
    ],
)
def test_expiry_warnings(fixed_window, now, warnings):
    assert check_tls_parameters(fixed_window) == []  # an expired pair is still a valid pair
    assert expiry_warnings(fixed_window, now) == warnings


def test_expiry_looks_at_the_leaf_only(rsa, fixed_window):
    params = {"ssl_crt": rsa.leaf_crt + fixed_window["ssl_crt"]}
    assert expiry_warnings(params, datetime.now(timezone.utc)) == []
    params = {"ssl_crt": fixed_window["ssl_crt"] + rsa.leaf_crt}
    assert expiry_warnings(params, datetime(2026, 1, 1, tzinfo=timezone.utc)) == [
        "ssl_crt: expired on 2025-01-31"
    ]


@pytest.mark.parametrize(
    "params", [{}, {"ssl_crt": ""}, {"ssl_crt": "garbage"}, {"ssl_crt": 3}, {"ssl_crt": HEADER_GARBAGE}]
)
def test_expiry_silent_without_a_usable_certificate(params):
    assert expiry_warnings(params, datetime.now(timezone.utc)) == []


def test_rsa_pss_or_sha_algorithms_do_not_matter(rsa):
    # Signature algorithm is irrelevant to the key match: an RSA cert signed
    # with SHA-512 matches its key as well.
    key = rsa.key_obj
    now = datetime.now(timezone.utc)
    crt = _self_signed(key, now - timedelta(days=1), now + timedelta(days=1), hashes.SHA512())
    assert check_tls_parameters({"ssl_crt": crt, "ssl_key": rsa.key}) == []


# ---------------------------------------------------------------- RSA key cost


def _rsa_pem_from_numbers(p: int, q: int, *, bad_iqmp: bool = False) -> str:
    """An RSA key built from given factors (not necessarily prime), serialised unchecked."""
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    iqmp = pow(q, -1, p) + (1 if bad_iqmp else 0)
    numbers = rsa_keys.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), iqmp, rsa_keys.RSAPublicNumbers(e, p * q)
    )
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    return _pem_key(key)


def _odd_factors(bits: int) -> tuple[int, int]:
    """Two odd numbers of bits/2 bits usable as RSA factors with e = 65537 (deterministic)."""
    half = bits // 2
    p = (1 << (half - 1)) | 1
    while True:
        p += 2
        if math.gcd(p - 1, 65537) == 1 and p % 3:
            break
    q = p + 2
    while True:
        q += 2
        if math.gcd(q - 1, 65537) == 1 and math.gcd(p, q) == 1 and math.gcd(
            (p - 1) * (q - 1), 65537
        ) == 1:
            return p, q


def test_inconsistent_rsa_key_is_refused():
    pem = _rsa_pem_from_numbers(*_odd_factors(2048), bad_iqmp=True)
    assert check_tls_parameters({"ssl_crt": "", "ssl_key": pem}) == [
        "ssl_crt: is needed when ssl_key is given",
        "ssl_key: is not a consistent RSA private key",
    ]


def test_huge_rsa_keys_are_cheap_to_check_and_capped():
    # OpenSSL's own check of a real 16384-bit key would test primes for a
    # long time; the arithmetic check answers at once.
    big = _rsa_pem_from_numbers(*_odd_factors(MAX_RSA_BITS))
    started = time.perf_counter()
    assert check_tls_parameters({"ssl_key": big}) == ["ssl_crt: is needed when ssl_key is given"]
    assert time.perf_counter() - started < 0.5
    too_big = _rsa_pem_from_numbers(*_odd_factors(MAX_RSA_BITS + 1024))
    assert check_tls_parameters({"ssl_key": too_big}) == [
        "ssl_crt: is needed when ssl_key is given",
        f"ssl_key: RSA keys over {MAX_RSA_BITS} bits are not accepted",
    ]
