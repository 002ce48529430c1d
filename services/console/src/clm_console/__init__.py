"""CLM console: the web pages marketing ops use, served next to the four services."""
