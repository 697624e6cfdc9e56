"""Benchmarks: ``skq bench overhead``, ``skq bench scaled``, ``skq bench run`` / ``demo``."""
