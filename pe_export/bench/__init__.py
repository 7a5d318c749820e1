"""Parity and latency measurement."""
