"""Pipeline: decode -> adapt -> dedup -> engine, batch-oriented, no I/O."""
