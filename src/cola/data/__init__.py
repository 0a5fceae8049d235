"""Candidate pools and the catalog of known data sets."""
