"""Loket router service."""
