"""The fault-injection suite: drive load, break things, check the history."""
