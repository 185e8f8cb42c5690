"""The handlers of `cdnreq` sub-commands that are more than a few lines.

cdnreq.cli parses the arguments and dispatches; each module here does one
command's work (and its output), so the parser stays one readable table.
"""
