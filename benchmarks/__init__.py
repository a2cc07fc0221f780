"""Measurements of this project (timings are printed and written to JSON, never asserted in tests)."""
