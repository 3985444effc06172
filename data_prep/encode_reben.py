#!/usr/bin/env python
"""Encode the reBEN (BigEarthNet v2.0) GeoTIFF release into the LMDB that splml reads, or verify one.

Encode (resumable: re-running checks what is there and only encodes what is missing or broken)::

    python data_prep/encode_reben.py --s2 BigEarthNet-S2 --s1 BigEarthNet-S1 --maps Reference_Maps \\
        --metadata metadata.parquet --out /data/reBEN/lmdb --workers 8

Verify every key of every patch of the metadata (exit status 1 and the bad keys on problems)::

    python data_prep/encode_reben.py --verify --metadata metadata.parquet --out /data/reBEN/lmdb

All the work is done by :mod:`splml.io.reben.encoder` and :mod:`splml.io.reben.verify`; this script parses options, sets up
logging and prints the summary line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    from splml.io.reben.encoder import SKIPPED_FILE, EncodeError, encode_reben
except ModuleNotFoundError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from splml.io.reben.encoder import SKIPPED_FILE, EncodeError, encode_reben

from splml.io.reben.verify import verify_reben


def _compare_source(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of patches or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value}")
    return value


def _value_range(text: str) -> tuple[str, tuple[float, float] | None]:
    """``MODALITY=LOW,HIGH`` or ``MODALITY=none`` (the range is validated by the encoder)."""
    modality, sep, bounds = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected MODALITY=LOW,HIGH or MODALITY=none (e.g. s1=-100,60), got {text!r}")
    if bounds.strip().lower() in ("none", "null"):
        return modality, None
    try:
        low, high = (float(v) for v in bounds.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH after {modality}=, got {bounds!r}") from None
    return modality, (low, high)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Encode reBEN GeoTIFFs (BigEarthNet-S2, BigEarthNet-S1, optional Reference_Maps) into one LMDB "
            "of safetensors values keyed by patch_id / s1_name / patch_id + '_reference_map', exactly as "
            "splml's reader expects. Re-running resumes: present keys are decoded and checked, a sample is "
            "compared with the sources, missing or corrupt patches are (re-)encoded."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--s2", type=Path, help="BigEarthNet-S2 root: <tile>/<patch_id>/<patch_id>_B01.tif ...")
    p.add_argument("--s1", type=Path, help="BigEarthNet-S1 root: <product>/<s1_name>/<s1_name>_VV.tif, _VH.tif")
    p.add_argument(
        "--maps",
        type=Path,
        help="Reference_Maps root: <tile>/<patch_id>/<patch_id>_reference_map.tif (optional; needed for "
        "labels=dominant). With --verify: require a map for every patch",
    )
    p.add_argument(
        "--metadata",
        type=Path,
        action="append",
        required=True,
        help="metadata.parquet: which patches to encode and their s1_name. Repeat to add files "
        "(e.g. metadata_for_patches_with_snow_cloud_or_shadow.parquet)",
    )
    p.add_argument("--out", type=Path, required=True, help="the LMDB directory to write (data.mdb goes here)")
    p.add_argument("--batch-size", type=int, default=512, help="patches per write transaction")
    p.add_argument("--workers", type=int, default=1, help="processes reading the TIFFs (the writer is one process)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help=f"log, count and leave out unusable patches (listed in <out>/{SKIPPED_FILE}) instead of stopping "
        "at the first one",
    )
    p.add_argument(
        "--compare-source",
        type=_compare_source,
        default=32,
        metavar="N|all",
        help="on resume, how many already-present patches (random sample) to compare byte for byte with "
        "their source rasters; every present patch is always decoded and checked",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --compare-source sample")
    p.add_argument(
        "--value-range",
        type=_value_range,
        action="append",
        default=[],
        metavar="MODALITY=LOW,HIGH|none",
        help="accepted band values per modality, as the reader's dataset.datamodule.value_range (default: "
        "s2=0,65535 i.e. any uint16, s1=-100,60 dB); a band with a value outside is a bad patch when "
        "encoding and a problem for --verify. Repeat for both modalities; 'none' skips the check",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="do not encode: decode every key of every metadata patch in --out and check band names, sizes, "
        "dtypes, finite values inside --value-range and valid map codes; exit 1 naming each bad key "
        "(a truncated data.mdb is an error before anything is read)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.verify and (args.s2 is None or args.s1 is None):
        p.error("--s2 and --s1 are required to encode (only --verify works without them)")
    if args.batch_size < 1 or args.workers < 1:
        p.error("--batch-size and --workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    value_range = dict(args.value_range)  # unnamed modalities keep their defaults
    try:
        if args.verify:
            result = verify_reben(
                args.out, args.metadata, expect_maps=True if args.maps else None, progress=not args.quiet,
                value_range=value_range,
            )  # fmt: skip
            for key, reason in result.problems:
                print(f"BAD {key}: {reason}", file=sys.stderr)
            print(result.line())
            return 0 if result.ok else 1
        summary = encode_reben(
            args.s2,
            args.s1,
            args.metadata,
            args.out,
            maps_root=args.maps,
            batch_size=args.batch_size,
            skip_bad=args.skip_bad,
            progress=not args.quiet,
            workers=args.workers,
            compare_source=args.compare_source,
            seed=args.seed,
            value_range=value_range,
        )
    except (EncodeError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.line())
    if summary.bad:
        print(f"{len(summary.bad)} bad patch(es) left out: see {args.out / SKIPPED_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
