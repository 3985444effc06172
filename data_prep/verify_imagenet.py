#!/usr/bin/env python
"""Check an ImageNet-1K tree before training: the splits ``dataset=imagenet`` builds, and every image decoded.

Example::

    python data_prep/verify_imagenet.py --root /data/imagenet --workers 16

Builds the splits exactly as ``dataset=imagenet`` does (same layouts, ``real.json``, bad-item
rules; ``--skip-bad`` lists the problems instead of stopping at the first kind), then, unless
``--no-decode``, decodes every training and validation image with the dataset's decoder
(``splml.data.datasets.imagenet.decode_rgb``) in ``--workers`` processes, so that a truncated or
corrupt file is found now rather than in a DataLoader worker hours into a run. Writes
``<out>/bad_images.csv`` (``item,reason``: the datamodule's skipped items, then the images that do
not decode) and prints one summary line (images per split, ReaL coverage, problems, images/s);
exits with status 1 when anything is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from multiprocessing import Pool
from pathlib import Path

try:
    from splml.data.datamodules.imagenet import ImageNetDataModule
except ModuleNotFoundError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from splml.data.datamodules.imagenet import ImageNetDataModule

from splml.data.datasets.imagenet import decode_rgb
from splml.data.labels import DatasetSinglePositive
from splml.io.errors import DataFormatError
from splml.io.run_folder import write_rows


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--root", type=Path, required=True, help="folder holding train/, val/ and real.json")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--val-labels", default="auto", help="auto | folders | devkit | loc")
    p.add_argument("--devkit-dir", default="ILSVRC2012_devkit_t12/data")
    p.add_argument("--real-file", default="real.json", help="relative to --root; 'none' for no ReaL labels")
    p.add_argument("--skip-bad", action="store_true", help="list missing / unlabelled images instead of stopping")
    p.add_argument("--no-decode", action="store_true", help="only build the splits")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <root>/verify)")
    return p.parse_args(argv)


def _decode(path: Path) -> tuple[str, str] | None:
    try:
        decode_rgb(path)
    except DataFormatError as exc:
        return str(path), str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    dm = ImageNetDataModule(
        args.root, num_classes=args.num_classes, val_labels=args.val_labels, devkit_dir=args.devkit_dir,
        real_file=None if args.real_file.lower() == "none" else args.real_file, skip_bad=args.skip_bad,
        labels=DatasetSinglePositive(), val_fraction=0.0,
    )  # fmt: skip
    dm.setup()
    train, test = dm.datasets["train"], dm.datasets["test"]
    problems = [(item, reason) for item, reason in dm.skipped]
    paths = [*train.image_paths, *test.image_paths]
    decoded_per_s = float("nan")
    if not args.no_decode:
        started = time.perf_counter()
        if args.workers > 1:
            with Pool(args.workers) as pool:
                problems += [bad for bad in pool.imap_unordered(_decode, paths, chunksize=64) if bad is not None]
        else:
            problems += [bad for bad in map(_decode, paths) if bad is not None]
        decoded_per_s = len(paths) / max(time.perf_counter() - started, 1e-9)
    out = args.out or args.root / "verify"
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "bad_images.csv", ("item", "reason"), problems)
    labelled = int(test.has_target.sum())
    print(
        f"ImageNet {args.root}: {len(train)} training and {len(test)} validation images, {dm.num_classes} classes; "
        f"ReaL labels for {labelled} validation images ({len(test) - labelled} left out); "
        f"{len(problems)} problem(s) in {out / 'bad_images.csv'}"
        + ("" if args.no_decode else f"; decoded {len(paths)} images at {decoded_per_s:,.0f}/s")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
