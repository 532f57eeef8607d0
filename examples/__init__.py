"""Runnable examples of using the service from other services."""
