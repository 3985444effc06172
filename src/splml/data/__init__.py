"""Data: datasets (the format of each collection), datamodules (loading policy), label sources, the synthetic generator."""
