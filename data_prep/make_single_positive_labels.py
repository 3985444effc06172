#!/usr/bin/env python
"""Write the single-positive training labels of a reBEN-format dataset to files.

Example::

    python data_prep/make_single_positive_labels.py --root /data/reBEN --out /data/reBEN/labels --seed 1

writes, for the train split in metadata order,

* ``train_random_single_labels.npy`` / ``.csv``: one positive per patch drawn with ``--seed``,
  identical to what ``labels=random seed=<S>`` draws in training;
* ``train_dominant_single_labels.npy`` / ``.csv``: the class with most reference-map pixels
  among the patch's labels, identical to ``labels=dominant`` (needs maps in the LMDB);
* ``single_positive_labels.json``: what the files were made from.

Why files: they pin the exact single positives of a benchmark so they can be shared, inspected
and reused (``labels.file=<npy>``) without re-drawing, and the dominant labels need not re-read
every reference map at the start of each run. The labels come from the very label sources
used in training (:mod:`splml.data.labels`), so there is no second implementation to drift.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:
    from splml.data.labels import DominantSinglePositive, RandomSinglePositive
except ModuleNotFoundError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from splml.data.labels import DominantSinglePositive, RandomSinglePositive

from splml.data.datasets.reben import ReBENDataset
from splml.io.label_files import save_observed
from splml.io.reben.format import CLASS_NAMES, METADATA_FILE
from splml.io.reben.lmdb import close_lmdb
from splml.io.reben.metadata import read_metadata, reference_map_to_class_counts

MODES: tuple[str, ...] = ("random", "dominant")
#: The default of ``seed`` in conf/train.yaml, which ``labels=random`` uses as its seed.
DEFAULT_SEED: int = 1
MANIFEST_FILE: str = "single_positive_labels.json"


def label_stem(out: Path, mode: str) -> Path:
    """``<out>/train_<mode>_single_labels`` (``.npy`` and ``.csv`` are added by save_observed)."""
    return Path(out) / f"train_{mode}_single_labels"


def _has_maps(ds: ReBENDataset) -> bool:
    try:
        ds.read_reference_map(0)
    except KeyError:
        return False
    return True


def make_label_files(
    root: str | Path,
    out: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    modes: Sequence[str] | None = None,
    include_snow_cloud: bool = False,
    lmdb_path: str | Path | None = None,
    metadata_path: str | Path | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Write the label files of ``modes`` (None: random, plus dominant when the LMDB has maps).

    Returns ``{mode: N x L observed labels}``. Asking for ``dominant`` on a dataset without
    reference maps is an error; with ``modes=None`` it is left out with a note on stderr.
    """
    root, out = Path(root), Path(out)
    metadata_path = Path(metadata_path) if metadata_path else root / METADATA_FILE
    unknown = [m for m in modes or () if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {MODES}")
    records = read_metadata(metadata_path, include_snow_cloud=include_snow_cloud)["train"]
    ds = ReBENDataset(root, "train", bands="rgb", lmdb_path=lmdb_path, metadata_path=metadata_path, records=records)
    ids = [r.patch_id for r in ds.records]
    try:
        has_maps = _has_maps(ds)
        if modes is None:
            modes = ["random", "dominant"] if has_maps else ["random"]
            if not has_maps:
                print(f"note: {ds.lmdb_path} has no reference maps: dominant labels not written", file=sys.stderr)
        elif "dominant" in modes and not has_maps:
            raise ValueError(
                f"{ds.lmdb_path} has no reference maps (no key {ids[0]}_reference_map): dominant labels need them; "
                "encode the LMDB with --maps or ask only for --modes random"
            )
        results: dict[str, np.ndarray] = {}
        if "random" in modes:
            results["random"] = RandomSinglePositive(seed=seed).observe(ds.targets, ids=ids, class_names=CLASS_NAMES)
        if "dominant" in modes:
            results["dominant"] = _dominant(ds, ids, progress)
    finally:
        close_lmdb(ds.lmdb_path)

    out.mkdir(parents=True, exist_ok=True)
    for mode, observed in results.items():
        save_observed(label_stem(out, mode), observed, ids, CLASS_NAMES)
    manifest = {
        "metadata": str(metadata_path.resolve()),
        "lmdb": str(ds.lmdb_path.resolve()),
        "include_snow_cloud": include_snow_cloud,
        "split": "train",
        "n_samples": len(ids),
        "class_order": "original",
        "class_names": list(CLASS_NAMES),
        "files": {mode: label_stem(out, mode).with_suffix(".npy").name for mode in results},
        "random_seed": seed if "random" in results else None,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return results


def _dominant(ds: ReBENDataset, ids: list[str], progress: bool) -> np.ndarray:
    """Dominant labels with a progress bar over the reference maps (the slow part)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ds), unit="map", desc="reference maps", dynamic_ncols=True)

    def class_counts(i: int) -> np.ndarray:
        if bar is not None:
            bar.update(1)
        return reference_map_to_class_counts(ds.read_reference_map(i))

    try:
        return DominantSinglePositive().observe(ds.targets, ids=ids, class_names=CLASS_NAMES, class_counts=class_counts)
    finally:
        if bar is not None:
            bar.close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Write train_random_single_labels.npy/.csv and train_dominant_single_labels.npy/.csv (N x 19 one-hot, "
            "train split in metadata order) for a reBEN-format dataset; load them in training with "
            "labels=random labels.file=... or labels=dominant labels.file=..."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--root", type=Path, required=True, help="dataset root: metadata.parquet and the LMDB (data.mdb)")
    p.add_argument("--out", type=Path, required=True, help="folder for the label files")
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of the random draw; equals labels.seed, which defaults to the run's seed (1 in conf/train.yaml)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=None,
        help="which files to write (default: random, and dominant when the LMDB has reference maps)",
    )
    p.add_argument("--include-snow-cloud", action="store_true", help="as dataset include_snow_cloud=true")
    p.add_argument("--lmdb-path", type=Path, help="LMDB directory, when not under --root")
    p.add_argument("--metadata", type=Path, help="metadata.parquet, when not in --root")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start = time.perf_counter()
    try:
        results = make_label_files(
            args.root,
            args.out,
            seed=args.seed,
            modes=args.modes,
            include_snow_cloud=args.include_snow_cloud,
            lmdb_path=args.lmdb_path,
            metadata_path=args.metadata,
            progress=not args.quiet,
        )
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    n = next(iter(results.values())).shape[0]
    parts = []
    for mode, observed in results.items():
        classes = int((observed.sum(0) > 0).sum())
        extra = f" seed {args.seed}" if mode == "random" else ""
        parts.append(f"{mode}{extra} ({classes}/{len(CLASS_NAMES)} classes used)")
    if len(results) == 2:
        agree = float((results["random"].argmax(1) == results["dominant"].argmax(1)).mean())
        parts.append(f"random = dominant for {100 * agree:.1f}% of patches")
    print(f"wrote {n} train labels to {args.out}: {', '.join(parts)}; {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
