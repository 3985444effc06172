"""Every on-disk format of the suite has its one owner here: one reader, one writer, one check.

* :mod:`splml.io.reben`: the reBEN LMDB (safetensors values) and ``metadata.parquet``: the
  zero-copy reader, the writer used by the synthetic generator and the GeoTIFF encoder, and
  ``verify_reben``;
* :mod:`splml.io.label_files`: the annotation CSV (``labels=manual`` and ``splml.annotate``) and
  the single-positive label files (``observed_train_labels.npy``/``.csv``,
  ``train_<mode>_single_labels.npy``);
* :mod:`splml.io.run_folder`: what a run folder holds: ``results.json``, ``csv/metrics.csv``,
  the checkpoints;
* :mod:`splml.io.weights`: state dicts in weight files and checkpoints, and how two of them differ;
* :mod:`splml.io.imagenet`: ILSVRC2012's label files (devkit ``meta.mat`` and ground truth,
  ``LOC_*`` files) and ReaL's ``real.json``.

Dataset-specific source formats (image folders with a label table, the SPML literature's
``.npy`` files) are read by their datasets in :mod:`splml.data.datasets`.
"""
