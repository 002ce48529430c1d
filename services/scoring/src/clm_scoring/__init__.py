"""CLM scoring service."""
