"""Drive the old cron requester against a slapproxy and a DevDns, from the test venv.

:class:`LegacyPipeline` runs ``tests/legacy/driver.py`` with
``.venv-legacy/bin/python`` (made by scripts/legacy-venv.sh; the old package
never enters the test venv) and plays the parties around it: the customers'
DNS (publishing the tokens the old code issued in DevDns) and the technical
CDN (publishing connection parameters to the entries the old code
requested). The legacy databases sit alone in :attr:`LegacyPipeline.db_dir`.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, split_guid

REPO = Path(__file__).resolve().parents[2]
LEGACY_PYTHON = REPO / ".venv-legacy" / "bin" / "python"
DRIVER = Path(__file__).with_name("driver.py")
DB_NAMES = {"source": "instance.db", "validated": "validated.db",
            "domains": "domains.db", "requested": "requested.db"}
CHALLENGE_LABEL = "_slapos-challenge"
PREFIX = "_cdnreq_"
SECRET = "legacy-fixture-secret"
RETENTION_S = 90 * 86400
# Added by the master to each shared item and kept by slapconfiguration; stage B would
# forward them as parameters and slapproxy would take the customer's slave_title for the
# technical entry's (its JSON-API title and guid then become the customer's).
STRIP_KEYS = ("slave_title", "slap_software_type")
_DRIVER_TIMEOUT_S = 300


class LegacyError(RuntimeError):
    """The old requester's run failed: its stderr says why."""


def ensure_legacy_venv() -> Path:
    """Run scripts/legacy-venv.sh (a no-op when its stamp is current); the legacy python."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "legacy-venv.sh")],
                          capture_output=True, text=True)
    if done.returncode != 0 or not LEGACY_PYTHON.exists():
        raise LegacyError(f"scripts/legacy-venv.sh failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return LEGACY_PYTHON


def legacy_reference(guid: str) -> str:
    """slapproxy's slave_reference of a shared instance: ``<requested_by>_<title>``."""
    title, requested_by, _ = split_guid(guid)
    return f"{requested_by}_{title}"


def connection_for(entry: dict) -> dict:
    """What the technical CDN publishes to one of its entries (rapid-cdn's main keys)."""
    params = entry.get("parameters") or {}
    slug = entry["title"].strip("_").replace("_", "-").lower()
    domain = params.get("custom_domain") or f"{slug}.cdn.test"
    return {"domain": domain, "url": f"http://{domain}", "site_url": f"http://{domain}",
            "secure_access": f"https://{domain}"}


def read_rows(path: Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    """Rows of a legacy database, read-only and leaving no -wal/-shm file beside it.

    The old code opens its databases in WAL mode and checkpoints on close, so once its
    run is over the file is whole: read it immutable. If a WAL is there (a run still
    going, or killed), read through it in plain read-only mode.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no legacy database {path}")
    wal = path.with_name(path.name + "-wal").exists()
    mode = "mode=ro" if wal else "mode=ro&immutable=1"
    con = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


class LegacyPipeline:
    """One legacy requester (its four databases) working for ``site``'s requester partition."""

    def __init__(self, site: CdnSite, dns: DevDns, workdir: Path, *,
                 prefix: str = PREFIX, retention_s: int = RETENTION_S):
        self.site, self.dns, self.prefix, self.retention_s = site, dns, prefix, retention_s
        self.workdir = Path(workdir)
        self.db_dir = self.workdir / "legacy-db"
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self.python = ensure_legacy_venv()
        self.runs: list[dict] = []
        self.invalid: dict[str, str] = {}  # reference -> schema error, for the source stage
        self.strip_keys = STRIP_KEYS
        self._published: set[str] = set()

    def db(self, role: str) -> Path:
        return self.db_dir / DB_NAMES[role]

    def job(self, stages: list[str]) -> dict:
        site, proxy = self.site, self.site.proxy
        return {
            "db": {role: str(self.db(role)) for role in DB_NAMES},
            "server_url": proxy.url, "computer_id": proxy.computer_id,
            "partition_id": site.requester_partition, "dns_nameserver": self.dns.address,
            "secret": SECRET, "retention_delay_s": self.retention_s,
            "software_url": site.cdn_sr, "software_type": "default", "prefix": self.prefix,
            "invalid": self.invalid, "strip_keys": list(self.strip_keys), "stages": stages,
        }

    def run(self, stages: tuple[str, ...] = ("source", "A", "B")) -> dict:
        """One cron run of the old requester (all three stages unless told)."""
        job_path = self.workdir / "legacy-job.json"
        job_path.write_text(json.dumps(self.job(list(stages))))
        began = time.monotonic()
        done = subprocess.run([str(self.python), str(DRIVER), str(job_path)],
                              capture_output=True, text=True, timeout=_DRIVER_TIMEOUT_S)
        if done.returncode != 0:
            raise LegacyError(f"legacy driver failed ({done.returncode}):\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["wall_s"] = round(time.monotonic() - began, 3)
        self.runs.append(result)
        return result

    # -- the parties around it -------------------------------------------------

    def rows(self, role: str, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """Read a legacy database read-only (see :func:`read_rows`)."""
        return read_rows(self.db(role), sql, args)

    def token(self, reference: str) -> tuple[str, str]:
        """(domain, token) the old code asks ``reference`` to publish."""
        row = self.rows("domains", "SELECT domain, token FROM domain_validation"
                        " WHERE instance_reference = ?", (reference,))
        if not row:
            raise LookupError(f"no domain_validation row for {reference!r}")
        return row[0]["domain"], row[0]["token"]

    def publish_token(self, reference: str) -> str:
        """The customer publishes its TXT challenge in DevDns; returns the domain."""
        domain, token = self.token(reference)
        self.dns.set_txt(f"{CHALLENGE_LABEL}.{domain}", token)
        return domain

    def publish_cdn(self) -> int:
        """The technical CDN publishes to each of its entries that has nothing yet."""
        count = 0
        for entry in self.site.technical_entries():
            if entry["instance_guid"] in self._published:
                continue
            self.site.publish_as_cdn(entry["instance_guid"], connection_for(entry))
            self._published.add(entry["instance_guid"])
            count += 1
        return count
