"""The operator verbs: reading and replaying dead letters, following the topics."""
