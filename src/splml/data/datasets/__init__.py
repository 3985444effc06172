"""The format of each collection as a torch dataset: files -> decoded, normalised, augmented items.

``reben`` (reBEN-format LMDB patches, through :class:`splml.io.reben.reader.ReBENReader`),
``images`` (RGB images of any collection), ``image_folders`` (image folders and their label
table), ``spml_files`` (the SPML literature's ``.npy`` files) and ``imagenet`` (fast JPEG
decoding, the standard ImageNet crop and evaluation view). How splits are built and
loaded is :mod:`splml.data.datamodules`' business.
"""
