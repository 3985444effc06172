"""splml: multi-label image classification from single-positive labels, every method compared fairly.

``splml.load_model(ckpt)`` gives back a trained model from its checkpoint alone (no dataset on
disk); ``splml.read_input(path, model.data_spec)`` prepares an image file as training did. Both
load lazily: ``import splml`` stays cheap (the commands' ``--help`` does not wait for torch).
"""

from __future__ import annotations

from typing import Any

from splml.version import __version__

__all__ = ["__version__", "load_model", "read_input"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from splml.inference import load_model

        return load_model
    if name == "read_input":
        from splml.data.datasets.files import read_input

        return read_input
    raise AttributeError(f"module 'splml' has no attribute {name!r}")
