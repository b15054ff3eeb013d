"""Domain logic of the handoff service (pure, no I/O)."""
