"""CLM ingest service."""
