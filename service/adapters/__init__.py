"""Every SQL statement and every Kafka client, behind the application's ports; driver
errors leave here as ``application.errors``. ``http`` serves the probes and metrics."""

__all__ = ["http", "kafka", "postgres"]
