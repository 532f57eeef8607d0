"""``python -m service`` is ``customer-service`` (handy under profilers and debuggers)."""

from service.cli import app

app()
