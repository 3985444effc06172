#!/usr/bin/env python
"""Index AID-multilabel: split files (train / validation / test) and the report of unmatched items.

Example::

    python data_prep/index_aid.py --root /data/AID_multilabel --out /data/AID_multilabel/index

Reads ``images_tr/<Scene>/*.jpg``, ``images_test/<Scene>/*.jpg`` and the label CSV exactly as
``dataset=aid`` does (same matching, same seeded validation carve), and writes:

* ``train.csv``, ``validation.csv``, ``test.csv``: ``stem,path,labels`` (path relative to the
  root, labels = class names joined by ``;``);
* ``unmatched.csv``: ``item,reason`` for every image without a label row, label row without an
  image, training image without any label, and (with ``--verify``) image that cannot be decoded.

The summary line gives the split sizes and the number of problems; ``--strict`` exits with
status 1 when there is any.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    from splml.data.datamodules.image_folders import AIDDataModule
except ModuleNotFoundError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from splml.data.datamodules.image_folders import AIDDataModule

from splml.data.datasets.image_folders import AID_SCENES
from splml.data.datasets.images import read_rgb
from splml.io.errors import DataFormatError
from splml.io.run_folder import write_rows


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Index AID-multilabel into split files and report unmatched images / label rows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--root", type=Path, required=True, help="folder holding images_tr/, images_test/ and the label CSV")
    p.add_argument("--labels-file", default="multilabel.csv", help="label CSV, relative to --root")
    p.add_argument("--train-dir", default="images_tr", help="official train folder, relative to --root")
    p.add_argument("--test-dir", default="images_test", help="official test folder, relative to --root")
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of the official train set used for validation"
    )
    p.add_argument("--split-seed", type=int, default=1200, help="seed of the validation carve")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <root>/index)")
    p.add_argument("--verify", action="store_true", help="decode every image and report the ones that fail")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if anything is reported")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = args.out or args.root / "index"
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    dm = AIDDataModule(
        args.root, labels_file=args.labels_file, train_dir=args.train_dir, test_dir=args.test_dir,
        val_fraction=args.val_fraction, split_seed=args.split_seed, skip_bad=True,
    )  # fmt: skip
    say(f"indexing {args.root / args.train_dir}, {args.root / args.test_dir} and {args.root / args.labels_file} ...")
    try:
        pool, test = dm.load_sources()
        splits, _ = dm.carve_validation(pool, test)
    except (DataFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = list(dm.skipped)
    if args.verify:
        from tqdm import tqdm

        every = [p for s in splits.values() for p in s.paths]
        for path in tqdm(every, desc="decoding", unit="img", disable=args.quiet):
            try:
                read_rgb(path)
            except DataFormatError as err:
                problems.append((path.relative_to(args.root).as_posix(), f"cannot decode: {err.__cause__ or err}"))
    scenes = {p.parent.name for s in splits.values() for p in s.paths}
    unknown_scenes = sorted(scenes - set(AID_SCENES))
    for split, source in splits.items():
        rows = [
            (sid, path.relative_to(args.root).as_posix(), ";".join(dm.class_names[c] for c in row.nonzero()[0]))
            for sid, path, row in zip(source.ids, source.paths, source.targets, strict=True)
        ]
        write_rows(out / f"{split}.csv", ("stem", "path", "labels"), rows)
    write_rows(out / "unmatched.csv", ("item", "reason"), problems)
    sizes = ", ".join(f"{s} {len(src)}" for s, src in splits.items())
    note = f"; scene folders not in AID: {unknown_scenes}" if unknown_scenes else ""
    print(
        f"indexed {sum(len(s) for s in splits.values())} images ({sizes}); {len(problems)} problem(s) listed in "
        f"{out / 'unmatched.csv'}{note}; {time.perf_counter() - start:.1f} s"
    )
    return 1 if (args.strict and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
