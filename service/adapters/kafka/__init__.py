"""Kafka: the clients built from the settings, and reading fetched batches."""
