"""COLA's three curation stages: domain (1), process (2), select (3)."""
