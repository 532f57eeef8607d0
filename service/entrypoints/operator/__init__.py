"""The operator verbs: reading and replaying dead letters, following the topics."""

__all__ = ["dead_letters", "tail"]
