"""The embedded synthetic dataset, written in the exact reBEN (BigEarthNet v2.0) file format.

Why it exists: the project must build, train and be tested without the 60+ GB real archive.
The synthetic set therefore goes through the *same* reader as the real files (one LMDB of
safetensors values plus ``metadata.parquet``), and it is built to be a meaningful test bed for
single-positive multi-label learning rather than a toy:

* every patch has a procedurally generated CORINE reference map (120 x 120 at 10 m), made of
  regions of a warped power diagram whose classes follow a *landscape type* (agricultural,
  forest, coastal, urban, mountain, mediterranean, lakes and wetlands), so classes are
  imbalanced and co-occur the way they do in Europe (Marine waters with Beaches, Urban fabric
  with Industrial units, the forest types together);
* the labels of a patch are *exactly* the classes holding at least :data:`MIN_LABEL_PIXELS`
  pixels of its map (smaller regions are merged into a neighbouring region first), so the
  "dominant class" single-positive mode has a ground truth;
* the Sentinel-2 bands are rendered from a per-pixel mixture of spectral endmembers (soil,
  green and dry vegetation, broad-leaved and coniferous canopy, water, sand, roofs ...) with a
  class-specific spatial pattern and texture, per-region variation, season, illumination, haze
  and sensor noise; 20 m and 60 m bands are block averages of the 10 m rendering. Sentinel-1
  backscatter mixes per-endmember sigma0 and adds gamma speckle. Several class pairs are
  deliberately confusable (the three forests, Pastures vs Natural grassland, Arable land vs
  Complex cultivation patterns) so that a trained network does not reach a perfect score.

Everything is deterministic: the header of patch ``j`` of split ``s`` comes from
``SeedSequence([seed, s, j])``, so the same configuration always yields byte-identical values.

Layout: :mod:`.config` (what to generate), :mod:`.tables` (spectra, recipes, landscapes,
acquisitions), :mod:`.scene` (one patch), :mod:`.generator` (the dataset, written through
:class:`splml.io.reben.writer.ReBENWriter`, and its cache).
"""

from splml.data.synthetic.config import GENERATOR_VERSION, MIN_LABEL_PIXELS, SyntheticConfig
from splml.data.synthetic.generator import (
    COMPLETE_MARKER,
    LMDB_DIR,
    ensure_synthetic,
    generate_synthetic_reben,
    is_complete,
    synthetic_root,
)

__all__ = [
    "COMPLETE_MARKER",
    "GENERATOR_VERSION",
    "LMDB_DIR",
    "MIN_LABEL_PIXELS",
    "SyntheticConfig",
    "ensure_synthetic",
    "generate_synthetic_reben",
    "is_complete",
    "synthetic_root",
]
