"""CLM stage-engine service."""
