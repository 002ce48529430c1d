"""CLM ingest: the one gate for events.

Validates what producers publish to the inbound topic and routes it to the domain topics.
"""
