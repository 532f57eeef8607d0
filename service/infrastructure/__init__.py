"""Settings, logging, metrics, tracing, retrying and failpoints: used by every layer,
importing none of them (but the domain's types that settings and metrics speak of)."""

__all__ = ["failpoints", "logging", "metrics", "retrying", "settings", "tracing"]
