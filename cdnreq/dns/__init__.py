"""DNS lookups for domain challenges: batched, concurrent TXT and address resolution."""

from cdnreq.dns.resolver import Lookup, Resolver

__all__ = ["Lookup", "Resolver"]
