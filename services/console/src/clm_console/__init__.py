"""CLM console: the marketing ops web console."""
