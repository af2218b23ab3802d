"""Benchmarks at real sizes (`make bench`): ratios measured side by side in one run, never in unit tests."""
