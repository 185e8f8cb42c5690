"""Read the cron requester's SQLite databases without touching them.

Each file (and its `-wal`, where the old requester's WAL mode left one) is
copied into a private temporary directory and read there: opening the
original, even read-only, may checkpoint its WAL or create a `-shm` file,
and the rollback to the old requester must find its files as they were.

Which file played which part is read from the files themselves, since the
old recipes took their paths from buildout options: `domain_validation`
marks the validation stage's token table; an `instance` table whose valid
rows carry what was published (the technical CDN's answer) is the request
stage's; of the others, the one with retained (`stopped`) rows or DNS
instructions is the validation stage's, the rest are the listing copies
the validation stage read (not needed).
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable

from cdnreq.legacy.state import STOPPED, VALID, LegacyProof, LegacyRow, LegacySource, LegacyState

SQLITE_MAGIC = b"SQLite format 3\x00"
TRANSMITTED = "Your instance is valid the request has been transmitted to the master"


class LegacyError(Exception):
    """The legacy state cannot be read; the message names the file and why."""


def read_legacy(paths: Iterable[Path]) -> LegacyState:
    files = _databases(paths)
    if not files:
        raise LegacyError(
            "no SQLite database found in " + ", ".join(str(p) for p in paths)
        )
    with tempfile.TemporaryDirectory(prefix="cdnreq-legacy-") as tmp:
        tables = {path: _read_copy(path, Path(tmp) / f"{i}.db") for i, path in enumerate(files)}
    return _assemble(tables)


def _databases(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            candidates = sorted(p for p in path.iterdir() if p.is_file())  # a link to a file counts
        elif path.is_file():
            candidates = [path]
        elif path.exists():
            raise LegacyError(f"{path}: neither a regular file nor a directory")
        else:
            raise LegacyError(f"{path}: no such file or directory")
        for candidate in candidates:
            if candidate.name.endswith(("-wal", "-shm", "-journal")):
                continue
            try:
                with candidate.open("rb") as f:
                    if f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                        found.append(candidate)
            except OSError as error:
                raise LegacyError(f"{candidate}: cannot read: {error.strerror}") from None
    by_target: dict[Path, Path] = {}
    for candidate in found:  # one file named twice (a link, or --from given twice) is read once
        by_target.setdefault(candidate.resolve(), candidate)
    return list(by_target.values())


def _read_copy(path: Path, copy: Path) -> dict[str, list[tuple[Any, ...]]]:
    try:
        shutil.copyfile(path, copy)
        real = path.resolve()  # SQLite keeps a linked database's WAL beside the file, not the link
        wal = real.with_name(real.name + "-wal")
        if wal.is_file():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
    except OSError as error:
        raise LegacyError(f"{path}: cannot copy it to read it: {error.strerror}") from None
    try:
        conn = sqlite3.connect(copy)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            tables: dict[str, list[tuple[Any, ...]]] = {}
            if "instance" in names:
                tables["instance"] = conn.execute(
                    "SELECT reference, json_parameters, json_error, valid_parameter, timestamp FROM instance"
                ).fetchall()
            if "domain_validation" in names:
                tables["domain_validation"] = conn.execute(
                    "SELECT instance_reference, domain, token, validated, timestamp FROM domain_validation"
                ).fetchall()
            if "used_hosts" in names:
                tables["used_hosts"] = conn.execute("SELECT host, instance_reference FROM used_hosts").fetchall()
            return tables
        finally:
            conn.close()
    except sqlite3.Error as error:
        raise LegacyError(f"{path}: not a readable legacy database: {error}") from None


def _assemble(files: dict[Path, dict[str, list[tuple[Any, ...]]]]) -> LegacyState:
    requested: list[Path] = []
    validation: list[Path] = []
    proofs: dict[str, LegacyProof] = {}
    used: dict[str, list[str]] = {}
    rows_of: dict[Path, dict[str, LegacyRow]] = {}
    roles: dict[Path, str] = {}
    tokens = [path for path, tables in files.items() if "domain_validation" in tables]
    if len(tokens) > 1:
        raise LegacyError(
            "more than one database holds the validation stage's tokens (domain_validation):"
            f" {', '.join(str(p) for p in tokens)}; pass --from with the one to import"
        )
    for path, tables in files.items():
        if "domain_validation" in tables:
            roles[path] = "domains"
            for ref, domain, token, validated, at in tables["domain_validation"]:
                if isinstance(ref, str) and isinstance(domain, str) and isinstance(token, str):
                    proofs[ref] = LegacyProof(ref, domain, token, _truth(validated), _seconds(at))
            for host, ref in tables.get("used_hosts", ()):
                if isinstance(host, str) and isinstance(ref, str):
                    used.setdefault(ref, []).append(host)
        if "instance" in tables:
            rows = {r.reference: r for r in (_row(t) for t in tables["instance"]) if r is not None}
            rows_of[path] = rows
            (requested if _is_requested(rows.values()) else validation).append(path)
    if len(requested) > 1:
        raise LegacyError(
            "more than one database looks like the request stage's (valid rows holding what was"
            f" published): {', '.join(str(p) for p in requested)}; pass --from with the one to import"
        )
    validated = _pick_validated(validation, rows_of)
    for path in requested:
        roles[path] = "requested"
    for path in validation:
        roles[path] = "validated" if path == validated else "source (not needed)"
    sources = tuple(
        LegacySource(str(p), roles.get(p, "unused"), len(rows_of.get(p, {})) or len(files[p].get("domain_validation", ())))
        for p in files
    )
    return LegacyState(
        requested=rows_of[requested[0]] if requested else {},
        validated=rows_of[validated] if validated is not None else {},
        proofs=proofs,
        used_hosts={ref: tuple(hosts) for ref, hosts in used.items()},
        sources=sources,
    )


def _is_requested(rows: Iterable[LegacyRow]) -> bool:
    for row in rows:
        if row.state == VALID and row.published:
            return True
        message = row.published.get("message")
        if isinstance(message, str) and message.startswith(TRANSMITTED):
            return True
    return False


def _pick_validated(paths: list[Path], rows_of: dict[Path, dict[str, LegacyRow]]) -> Path | None:
    """The validation stage's table: it alone holds retained rows and DNS
    instructions; when nothing tells them apart, the listing copies hold the
    same rows and either will do."""

    def marks(path: Path) -> int:
        return sum(
            1 for r in rows_of[path].values() if r.state == STOPPED or "txt_record" in r.published
        )

    return max(paths, key=lambda p: (marks(p), len(rows_of[p]), str(p)), default=None)


def _row(values: tuple[Any, ...]) -> LegacyRow | None:
    reference, parameters, published, state, at = values
    if not isinstance(reference, str) or not reference:
        return None
    return LegacyRow(
        reference,
        _object(parameters),
        _object(published) or {},
        state if isinstance(state, str) else VALID,  # the old code read NULL as valid
        _seconds(at),
    )


def _object(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _seconds(value: Any) -> float | None:
    """A time the old code wrote (str(int(time.time()))); None when it cannot
    be read: a guess (0, "nan", "inf") would end a retention or win a host."""
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) else None


def _truth(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
