"""CLM campaigns service."""
