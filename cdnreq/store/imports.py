"""The store's record of imports from the cron requester and their findings.

Written in the import's own transaction (Store.commit's `also`), so the
findings exist exactly when the imported state does; read by `cdnreq status`
and `cdnreq explain`.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from cdnreq.legacy.findings import Finding

# the import's row and its findings in one go: the findings take the id of
# the row the same transaction just inserted
_INSERT_IMPORT = "INSERT INTO imports (at, source, summary) VALUES (?, ?, ?)"
_INSERT_FINDING = (
    "INSERT INTO import_findings (import_id, guid, reference, kind, host, found, decision) "
    "VALUES ((SELECT MAX(id) FROM imports), ?, ?, ?, ?, ?, ?)"
)


def steps(at: float, source: str, summary: Mapping[str, Any], findings: Iterable[Finding]) -> list[tuple[str, list[Any]]]:
    rows = [(f.guid, f.reference, f.kind, f.host, f.found, f.decision) for f in findings]
    return [
        (_INSERT_IMPORT, [(at, source, json.dumps(dict(summary), sort_keys=True))]),
        (_INSERT_FINDING, rows),
    ]


async def last_import(store: Any, limit: int = 200) -> dict[str, Any] | None:
    """The newest import, with its findings (at most `limit`) and their count."""
    if store.schema_version < 5:  # a reader of a store not yet migrated: no import ever ran
        return None
    rows = await store._all("SELECT id, at, source, summary FROM imports ORDER BY id DESC LIMIT 1")
    if not rows:
        return None
    id_, at, source, summary = rows[0]
    found = await store._all(
        "SELECT guid, reference, kind, host, found, decision FROM import_findings"
        " WHERE import_id = ? ORDER BY id LIMIT ?", (id_, limit),
    )
    total = await store._all("SELECT COUNT(*) FROM import_findings WHERE import_id = ?", (id_,))
    return {
        "at": at, "source": source, "summary": json.loads(summary), "findings_total": total[0][0],
        "findings": [dict(zip(("guid", "reference", "kind", "host", "found", "decision"), r)) for r in found],
    }


async def findings_of(store: Any, guid: str) -> list[dict[str, Any]]:
    if store.schema_version < 5:
        return []
    rows = await store._all(
        "SELECT kind, host, found, decision FROM import_findings WHERE guid = ? ORDER BY id", (guid,)
    )
    return [dict(zip(("kind", "host", "found", "decision"), r)) for r in rows]
