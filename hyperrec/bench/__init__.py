"""Benchmarks (`hyperrec bench ...`): they write numbers, never assert them. Nothing in the
core imports this package."""
