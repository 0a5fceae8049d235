"""Candidate pools, the one dataset-schema table (schemas.py) and the catalog of known data sets."""
