"""Benchmarks: each measures sawt against a named peer in the same run and prints the ratio."""
