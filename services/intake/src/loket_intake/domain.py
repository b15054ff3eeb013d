"""Domain logic of the intake service (pure, no I/O)."""
