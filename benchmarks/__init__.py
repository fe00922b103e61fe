"""Benchmarks: each module runs with `python -m benchmarks.<name> --data-dir ../shared/data`."""
