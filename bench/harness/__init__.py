"""The warder benchmark harness (driven by bench/bench.py; stdlib only)."""
