"""``python -m service`` is ``customer-service`` (handy under profilers and debuggers)."""

from service.entrypoints.launch import main

main()
