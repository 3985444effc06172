"""Tests of splml.methods.scl (the layout mirrors src/splml/methods)."""
