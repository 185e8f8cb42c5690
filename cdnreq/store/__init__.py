"""cdnreq's memory between ticks: one SQLite file, one writer."""

from cdnreq.store.errors import SchemaTooNew, StoreError, StoreLocked
from cdnreq.store.sqlite import Store

__all__ = ["Store", "StoreError", "SchemaTooNew", "StoreLocked"]
