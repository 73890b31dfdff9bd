"""Demo support: a deterministic synthetic operator stream in the reference wire format."""
