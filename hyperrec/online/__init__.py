"""Online: the request path of a loaded model version (retrieve, rank, re-rank, explain), the
feedback stages, the exploration bandit and its shared state, micro-batching, hot swap and
the Redis list cache."""
