"""Tools for the demo, the tests and the benchmark: a real master (slapproxy)
and a small DNS server on loopback. Not part of the installed package."""
