"""The decisions of a tick, pure: data in, decisions out, no ``await``, no I/O.

The shells in cdnreq/reconcile/ (the tick, the executor, the DNS step, the
committer) apply what these modules decide.
"""
