"""What a process runs: the consume loop, the command line, the client."""
