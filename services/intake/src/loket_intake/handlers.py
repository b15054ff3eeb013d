"""Message and HTTP handlers of the intake service."""
