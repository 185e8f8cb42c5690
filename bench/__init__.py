"""Benchmark tooling for cdnreq (not part of the installed package, never used by the test suite as a master)."""
