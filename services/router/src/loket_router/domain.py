"""Domain logic of the router service (pure, no I/O)."""
