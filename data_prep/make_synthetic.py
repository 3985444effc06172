#!/usr/bin/env python
"""Write the embedded synthetic dataset in the reBEN (BigEarthNet v2.0) format to a folder.

Example::

    python data_prep/make_synthetic.py --out /tmp/reben_synthetic --n-train 1200 --seed 0

The folder then holds ``lmdb/`` and ``metadata.parquet`` and can be used anywhere a real reBEN
root is expected (``dataset=ben dataset.datamodule.root=/tmp/reben_synthetic``). All the work is
done by :func:`splml.data.synthetic.generate_synthetic_reben`; this script only parses options
and prints a summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    from splml.data.synthetic import SyntheticConfig, generate_synthetic_reben
except ModuleNotFoundError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from splml.data.synthetic import SyntheticConfig, generate_synthetic_reben

from splml.io.reben.format import METADATA_FILE, SPLITS


def _parse(argv: list[str] | None) -> argparse.Namespace:
    defaults = SyntheticConfig()
    p = argparse.ArgumentParser(
        description="Generate the synthetic reBEN dataset (LMDB + metadata.parquet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (must not hold a dataset yet)")
    p.add_argument("--n-train", type=int, default=defaults.n_train, help="patches in the train split")
    p.add_argument("--n-validation", type=int, default=defaults.n_validation, help="patches in the validation split")
    p.add_argument("--n-test", type=int, default=defaults.n_test, help="patches in the test split")
    p.add_argument("--seed", type=int, default=defaults.seed, help="generator seed (same seed, same bytes)")
    p.add_argument(
        "--difficulty",
        type=float,
        default=defaults.difficulty,
        help="scale of nuisance variation (0 = clean signatures, 1 = calibrated default)",
    )
    p.add_argument("--no-reference-maps", action="store_true", help="do not store the CLC reference maps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        cfg = SyntheticConfig(
            n_train=args.n_train,
            n_validation=args.n_validation,
            n_test=args.n_test,
            seed=args.seed,
            with_reference_maps=not args.no_reference_maps,
            difficulty=args.difficulty,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        root = generate_synthetic_reben(args.out, cfg, progress=not args.quiet)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start

    import pyarrow.parquet as pq

    meta = pq.read_table(root / METADATA_FILE, columns=["split", "labels"]).to_pydict()
    per_split = {s: meta["split"].count(s) for s in SPLITS}
    n = len(meta["labels"])
    mean_labels = sum(len(x) for x in meta["labels"]) / max(n, 1)
    size_mb = _folder_size(root) / 2**20
    splits = ", ".join(f"{s} {c}" for s, c in per_split.items())
    print(
        f"wrote {n} patches to {root} ({splits}); mean labels per patch {mean_labels:.2f}; "
        f"{size_mb:.1f} MiB; {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
