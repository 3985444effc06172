"""Loading policy: which items form each split and how they are batched.

:class:`~splml.data.datamodules.base.SplitDataModule` holds everything the collections share
(label source, augmentation, ``max_samples``, loader settings, the epoch-seeded sampler);
``reben``, ``images``, ``image_folders``, ``spml_files`` and ``imagenet`` build their splits from
:mod:`splml.data.datasets`.
"""
