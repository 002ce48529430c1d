"""Local stack for development and tests."""
