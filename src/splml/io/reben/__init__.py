"""The reBEN (BigEarthNet v2.0) files: an LMDB of safetensors values plus ``metadata.parquet``.

One owner per part: :mod:`.format` (key names, band sizes, classes, statistics),
:mod:`.values` (the zero-copy value parser and the check of one value), :mod:`.lmdb` (opening
an LMDB safely), :mod:`.metadata` (reading and writing ``metadata.parquet``), :mod:`.reader`
(reading the values of a patch), :mod:`.writer` (writing them: used by the synthetic generator
and the GeoTIFF encoder), :mod:`.verify` (checking a whole LMDB) and :mod:`.encoder` /
:mod:`.geotiff` (encoding the GeoTIFF release).
"""
