"""Tests of splml.methods (the layout mirrors src/splml/methods)."""
