"""Deciding what a tick must do (pure) and doing it (bounded)."""
