"""intake tests: this directory is on sys.path (pytest prepend mode), so every tier can
``import intake_support`` (shared helpers for real Kafka/Redis tests)."""
