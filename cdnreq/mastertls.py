"""The TLS context for the master, built once at start-up from [master].

A client certificate that cannot be loaded must stop `run` before its first
tick (exit 2, naming the key and the file), not fail every tick with an
ssl traceback. So the files are read, parsed as PEM and matched here, and
the context is built here; the master client only ever receives the result.
A reload builds a new one the same way, and keeps the old one when it fails.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cdnreq.config import MasterConfig
from cdnreq.fsaccess import read_file

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TlsConfigError(Exception):
    """The TLS files of [master] cannot be used; `problems` is one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _certificates(key: str, path: Path, problems: list[str]) -> list[x509.Certificate]:
    data, why = read_file(path)
    if why is not None:
        problems.append(f"[master].{key}: {why}")
        return []
    try:
        certs = x509.load_pem_x509_certificates(data or b"")
    except ValueError:
        certs = []
    if not certs:
        problems.append(f"[master].{key}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certs


def _private_key(path: Path, problems: list[str]):
    data, why = read_file(path)
    if why is not None:
        problems.append(f"[master].key_file: {why}")
        return None
    try:
        return serialization.load_pem_private_key(data or b"", password=None)
    except TypeError:
        problems.append(f"[master].key_file: {path} is encrypted; cdnreq needs an unencrypted key")
    except ValueError as error:
        problems.append(f"[master].key_file: {path} is not a PEM private key ({_first_line(error)})")
    except Exception as error:  # noqa: BLE001 -- cryptography raises library errors on odd keys
        problems.append(f"[master].key_file: {path} cannot be loaded ({_first_line(error)})")
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def tls_problems(master: MasterConfig) -> list[str]:
    """What is wrong with [master]'s TLS settings, one line each (none: usable)."""
    problems: list[str] = []
    tls_keys = [k for k in ("cert_file", "ca_file") if getattr(master, k) is not None]
    if tls_keys and not master.url.lower().startswith("https://"):
        problems.append(
            f"[master].url: {master.url} is not https:// but [master].{tls_keys[0]} is set;"
            " a certificate is only used over https (use https:// or remove it)"
        )
    if master.ca_file is not None:
        _certificates("ca_file", master.ca_file, problems)
    if master.cert_file is not None and master.key_file is not None:
        certs = _certificates("cert_file", master.cert_file, problems)
        key = _private_key(master.key_file, problems)
        if certs and key is not None:
            if certs[0].public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
                problems.append(
                    f"[master].key_file: {master.key_file} is not the key of the certificate"
                    f" in [master].cert_file ({master.cert_file})"
                )
    return problems


def client_context(master: MasterConfig) -> ssl.SSLContext | None:
    """The context for an https master (None for http), or TlsConfigError."""
    problems = tls_problems(master)
    if problems:
        raise TlsConfigError(problems)
    if not master.url.lower().startswith("https://"):
        return None
    try:
        context = ssl.create_default_context(cafile=_str(master.ca_file))
    except (ssl.SSLError, OSError) as error:
        raise TlsConfigError([f"[master].ca_file: {master.ca_file}: cannot be loaded ({_first_line(error)})"]) from None
    if master.cert_file is not None:
        try:
            context.load_cert_chain(str(master.cert_file), _str(master.key_file))
        except (ssl.SSLError, OSError) as error:
            raise TlsConfigError(
                [f"[master].cert_file: {master.cert_file} with {master.key_file}: cannot be loaded"
                 f" ({_first_line(error)})"]
            ) from None
    return context


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
