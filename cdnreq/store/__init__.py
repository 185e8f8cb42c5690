"""cdnreq's memory between ticks: one SQLite file, one writer, behind the
protocols of cdnreq.store.interface (the rest of cdnreq names those; only
the places that open a store name the engine, Store)."""

from cdnreq.store.backup import take_backup
from cdnreq.store.errors import SchemaTooNew, StoreError, StoreLocked, StoreLost, StoreUnreachable
from cdnreq.store.interface import Engine, InstanceReads, TickStore
from cdnreq.store.restoring import RestoreResult, restore, start_refusal
from cdnreq.store.sqlite import Store
from cdnreq.store.verify import BackupInfo

__all__ = [
    "BackupInfo",
    "Engine",
    "InstanceReads",
    "RestoreResult",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreLocked",
    "StoreLost",
    "StoreUnreachable",
    "TickStore",
    "restore",
    "start_refusal",
    "take_backup",
]
