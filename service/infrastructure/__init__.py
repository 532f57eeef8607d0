"""Settings, logging, metrics, tracing, retrying and failpoints: used by every layer."""
