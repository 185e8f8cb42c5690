"""cdnreq's memory between ticks: one SQLite file, one writer."""

from cdnreq.store.backup import take_backup
from cdnreq.store.errors import SchemaTooNew, StoreError, StoreLocked, StoreLost
from cdnreq.store.restoring import RestoreResult, restore, start_refusal
from cdnreq.store.sqlite import Store
from cdnreq.store.verify import BackupInfo

__all__ = [
    "BackupInfo",
    "RestoreResult",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoreLost",
    "restore",
    "start_refusal",
    "take_backup",
]
