"""Loket intake service."""
