"""The throughput and latency benchmark, with a naive baseline worker."""
