"""Tests of splml.methods.adagc (the layout mirrors src/splml/methods)."""
