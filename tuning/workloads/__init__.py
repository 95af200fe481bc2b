"""Workload files (problem lists) for warm-up runs and benchmarks, shipped as package data."""
