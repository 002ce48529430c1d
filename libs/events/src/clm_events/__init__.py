"""Shared CLM event contracts and Kafka/Postgres plumbing."""
