"""cdnreq: keeps a SlapOS technical CDN in step with the shared instances customers order."""

__version__ = "0.1.0"
