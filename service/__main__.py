"""``python -m service`` is ``customer-service`` (handy under profilers and debuggers)."""

from service.entrypoints.cli import app

app()
