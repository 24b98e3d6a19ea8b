"""Benchmarks of nova-multidest: ``python -m benchmarks.NAME``."""
