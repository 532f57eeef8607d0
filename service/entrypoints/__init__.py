"""What a process runs, translating its input and delegating to the application: the
consume loop, the command line, the client, the operator verbs. The modules are not
imported here: ``bootstrap`` imports the consume loop, and the command line imports
``bootstrap``."""

__all__ = ["cli", "client", "kafka_consumer", "operator"]
