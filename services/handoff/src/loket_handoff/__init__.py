"""Loket handoff service."""
