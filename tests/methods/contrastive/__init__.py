"""Tests of splml.methods.contrastive (the layout mirrors src/splml/methods)."""
