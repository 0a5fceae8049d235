"""Compression of a model with a curated calibration set."""
