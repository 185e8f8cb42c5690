"""Checks on shared-instance parameters that a JSON Schema cannot express."""
