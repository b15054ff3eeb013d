"""Message and HTTP handlers of the handoff service."""
