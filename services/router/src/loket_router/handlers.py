"""Message and HTTP handlers of the router service."""
