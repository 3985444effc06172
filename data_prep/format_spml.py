#!/usr/bin/env python
"""Write the SPML literature's formatted files from the official annotations.

Examples::

    python data_prep/format_spml.py coco --root /data/coco        # annotations/instances_{train,val}2014.json
    python data_prep/format_spml.py voc --root /data/voc          # VOCdevkit/VOC2012/ImageSets/Main/<class>_{train,val}.txt
    python data_prep/format_spml.py cub --root /data/cub          # CUB_200_2011/{images,train_test_split}.txt + attributes
    python data_prep/format_spml.py nuswide --root /data/nuswide \\
        --train-list train_images.txt --train-labels train_labels.txt \\
        --test-list test_images.txt --test-labels test_labels.txt --concepts Concepts81.txt

Writes into ``--out`` (default: ``--root``): ``formatted_{train,val}_images.npy`` (string array of
image paths relative to the dataset's images folder), ``formatted_{train,val}_labels.npy``
(uint8, N x L, 0/1) and ``class_names.txt`` (one class per line, label-vector order). ``train``
is the official train set, ``val`` the official val/test set; ``dataset=<name>`` then carves
the validation split. Rows follow the literature's conventions, so its seeded 80/20 split
picks the same images:

* COCO: images with at least one instance annotation (crowd ones included), ordered by their
  id compared as text; categories in the file's order (ascending id); paths
  ``<split>2014/<file_name>``.
* VOC: images with at least one positive entry, ordered by name; paths ``<id>.jpg``. Entries
  ``1`` are positives, ``-1`` negatives; ``0`` marks "difficult" objects, which the
  literature's formatting counts as NOT present (only ``1`` is kept). ``--difficult positive``
  counts them as present instead.
* CUB: every image in ``images.txt`` order; labels = ``is_present`` of the 312 attributes;
  paths as in ``images.txt`` (relative to ``CUB_200_2011/images``).
* NUS-WIDE (a simple documented input, since the official label files come per concept): an
  image list (one relative path per line; ``\\`` is turned into ``/``) and a label matrix (one
  row of 0/1 per image, separated by spaces, tabs or commas) per split, and optionally the
  concept names (one per line, e.g. ``Concepts81.txt``).

Images without any positive label are dropped (COCO and VOC define their lists that way;
``--keep-empty`` keeps them for CUB and NUS-WIDE); the summary line says how many.
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
    from splml.io.errors import DataFormatError
except ModuleNotFoundError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from splml.io.errors import DataFormatError

from splml.data.datasets.spml_files import CLASS_NAMES_FILE, VOC_CLASSES

#: Official phase names of the formatted files: train = official train, val = official val (our test).
PHASES = ("train", "val")


class Phase:
    """Image paths and label rows of one official phase, as they will be written."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.uint8)
        self.dropped = 0

    def drop_empty(self) -> Phase:
        keep = self.labels.sum(1) > 0
        kept = Phase([p for p, k in zip(self.paths, keep, strict=True) if k], self.labels[keep])
        kept.dropped = int((~keep).sum())
        return kept


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def format_coco(root: Path, keep_empty: bool, say) -> tuple[dict[str, Phase], list[str]]:
    """COCO 2014 from ``annotations/instances_{train,val}2014.json``."""
    names: list[str] | None = None
    phases: dict[str, Phase] = {}
    for phase in PHASES:
        path = root / "annotations" / f"instances_{phase}2014.json"
        say(f"reading {path} ...")
        data = _read_json(path)
        for key in ("categories", "annotations", "images"):
            if key not in data:
                raise DataFormatError(f"{path}: no {key!r} entry; is this an instances_*.json file?")
        categories = data["categories"]
        phase_names = [c["name"] for c in categories]
        if names is not None and phase_names != names:
            raise DataFormatError(f"{path}: categories differ from those of the train file")
        names = phase_names
        column = {c["id"]: k for k, c in enumerate(categories)}
        file_name = {img["id"]: img["file_name"] for img in data["images"]}
        labelled: dict[int, set[int]] = {}
        for ann in data["annotations"]:
            if ann["category_id"] not in column:
                raise DataFormatError(f"{path}: annotation {ann.get('id')} has unknown category {ann['category_id']}")
            labelled.setdefault(int(ann["image_id"]), set()).add(column[ann["category_id"]])
        ids = set(labelled) | (set(file_name) if keep_empty else set())
        order = sorted(ids, key=str)  # the literature orders image ids as text
        labels = np.zeros((len(order), len(names)), dtype=np.uint8)
        for r, image_id in enumerate(order):
            labels[r, sorted(labelled.get(image_id, ()))] = 1
        paths = [f"{phase}2014/{file_name.get(i, f'COCO_{phase}2014_{i:012d}.jpg')}" for i in order]
        phases[phase] = Phase(paths, labels)
    assert names is not None
    return phases, names


def _voc_dir(root: Path) -> Path:
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise FileNotFoundError(f"no VOCdevkit/VOC2012/ImageSets/Main under {root}")


def format_voc(root: Path, difficult: str, say) -> tuple[dict[str, Phase], list[str]]:
    """VOC 2012 from ``ImageSets/Main/<class>_{train,val}.txt`` (entries 1 / -1 / 0)."""
    main = _voc_dir(root) / "ImageSets" / "Main"
    present = {"1"} | ({"0"} if difficult == "positive" else set())
    phases: dict[str, Phase] = {}
    for phase in PHASES:
        positives: dict[str, set[int]] = {}
        for c, name in enumerate(VOC_CLASSES):
            path = main / f"{name}_{phase}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"VOC class list not found: {path}")
            for line_no, line in enumerate(path.read_text().splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
                    raise DataFormatError(f"{path}, line {line_no}: expected '<image id> <1|-1|0>', got {line!r}")
                entry = positives.setdefault(fields[0], set())
                if fields[1] in present:
                    entry.add(c)
        order = sorted(positives)
        labels = np.zeros((len(order), len(VOC_CLASSES)), dtype=np.uint8)
        for r, image_id in enumerate(order):
            labels[r, sorted(positives[image_id])] = 1
        phases[phase] = Phase([f"{i}.jpg" for i in order], labels)
        say(f"{phase}: {len(order)} images listed in {main}")
    return phases, list(VOC_CLASSES)


def _cub_dir(root: Path) -> Path:
    for candidate in (root / "CUB_200_2011", root / "CUB_200_2011" / "CUB_200_2011", root):
        if (candidate / "images.txt").is_file():
            return candidate
    raise FileNotFoundError(f"no CUB_200_2011/images.txt under {root}")


def _numbered_lines(path: Path, min_fields: int) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"CUB file not found: {path}")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < min_fields:
            raise DataFormatError(f"{path}, line {line_no}: expected at least {min_fields} fields, got {line!r}")
        rows.append((line_no, fields))
    return rows


def format_cub(root: Path, say) -> tuple[dict[str, Phase], list[str]]:
    """CUB-200-2011: ``images.txt``, ``train_test_split.txt``, ``attributes/image_attribute_labels.txt``."""
    cub = _cub_dir(root)
    images = {int(f[0]): f[1] for _, f in _numbered_lines(cub / "images.txt", 2)}
    is_train = {int(f[0]): f[1] == "1" for _, f in _numbered_lines(cub / "train_test_split.txt", 2)}
    names_path = next(
        (p for p in (cub / "attributes" / "attributes.txt", cub / "attributes.txt", cub.parent / "attributes.txt")
         if p.is_file()), None,
    )  # fmt: skip
    names = [" ".join(f[1:]) for _, f in _numbered_lines(names_path, 2)] if names_path else []
    width = len(names) or 312
    labels_path = cub / "attributes" / "image_attribute_labels.txt"
    say(f"reading {labels_path} ...")
    row_of = {image_id: r for r, image_id in enumerate(images)}
    labels = np.zeros((len(images), width), dtype=np.uint8)
    counts = np.zeros(len(images), dtype=np.int64)
    # Some lines of the official file carry an extra field; only the first three are used.
    for line_no, f in _numbered_lines(labels_path, 3):
        image_id, attribute, value = int(f[0]), int(f[1]), f[2]
        if image_id not in row_of or not 1 <= attribute <= width or value not in ("0", "1"):
            raise DataFormatError(f"{labels_path}, line {line_no}: bad entry {' '.join(f)!r}")
        labels[row_of[image_id], attribute - 1] = int(value)
        counts[row_of[image_id]] += 1
    incomplete = [i for i, r in row_of.items() if counts[r] != width]
    if incomplete:
        raise DataFormatError(
            f"{labels_path}: image {incomplete[0]} has {counts[row_of[incomplete[0]]]} of {width} attributes"
        )
    missing_split = [i for i in images if i not in is_train]
    if missing_split:
        raise DataFormatError(f"{cub / 'train_test_split.txt'}: image {missing_split[0]} has no split")
    phases = {}
    for phase, wanted in (("train", True), ("val", False)):
        rows = [row_of[i] for i in images if is_train[i] == wanted]
        phases[phase] = Phase([images[i] for i in images if is_train[i] == wanted], labels[rows])
    return phases, names


def _read_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"label matrix not found: {path}")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        cells = line.replace(",", " ").split()
        if not cells:
            continue
        if any(c not in ("0", "1") for c in cells):
            raise DataFormatError(f"{path}, line {line_no}: labels must be 0 or 1, got {line.strip()!r}")
        if rows and len(cells) != len(rows[0]):
            raise DataFormatError(f"{path}, line {line_no}: {len(cells)} labels, but line 1 has {len(rows[0])}")
        rows.append([int(c) for c in cells])
    return np.array(rows, dtype=np.uint8)


def format_nuswide(args: argparse.Namespace, say) -> tuple[dict[str, Phase], list[str]]:
    """NUS-WIDE from image lists + 0/1 label matrices (text), see the module docstring."""
    names: list[str] = []
    if args.concepts:
        names = [x.strip() for x in Path(args.concepts).read_text(encoding="utf-8").splitlines() if x.strip()]
    phases = {}
    for phase, list_file, labels_file in (
        ("train", args.train_list, args.train_labels),
        ("val", args.test_list, args.test_labels),
    ):
        if not (list_file and labels_file):
            raise ValueError("nuswide needs --train-list, --train-labels, --test-list and --test-labels")
        list_path, labels_path = Path(list_file), Path(labels_file)
        if not list_path.is_file():
            raise FileNotFoundError(f"image list not found: {list_path}")
        paths = [x.strip().replace("\\", "/") for x in list_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        labels = _read_matrix(labels_path)
        if len(paths) != len(labels):
            raise DataFormatError(f"{list_path} lists {len(paths)} images but {labels_path} has {len(labels)} rows")
        if names and labels.shape[1] != len(names):
            raise DataFormatError(
                f"{labels_path}: rows have {labels.shape[1]} labels, {args.concepts} names {len(names)}"
            )
        phases[phase] = Phase(paths, labels)
        say(f"{phase}: {len(paths)} images from {list_path}")
    if phases["train"].labels.shape[1] != phases["val"].labels.shape[1]:
        raise DataFormatError(f"{args.train_labels} and {args.test_labels} have different numbers of labels")
    return phases, names


def write_formatted(out: Path, phases: dict[str, Phase], names: Sequence[str]) -> None:
    """Save the formatted files (and class_names.txt when names are known)."""
    out.mkdir(parents=True, exist_ok=True)
    for phase, data in phases.items():
        np.save(out / f"formatted_{phase}_images.npy", np.array(data.paths, dtype=str))
        np.save(out / f"formatted_{phase}_labels.npy", data.labels)
    if names:
        (out / CLASS_NAMES_FILE).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Write formatted_{train,val}_{images,labels}.npy (SPML literature format) from official annotations.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Writes into" + str(__doc__).split("Writes into", 1)[1],
    )
    p.add_argument("dataset", choices=("coco", "voc", "cub", "nuswide"), help="which annotation format to read")
    p.add_argument("--root", type=Path, required=True, help="the dataset folder (official files inside)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: --root)")
    p.add_argument("--keep-empty", action="store_true", help="keep images without any positive label")
    p.add_argument(
        "--difficult", choices=("negative", "positive"), default="negative",
        help="VOC: how entries marked 0 (difficult) count; the literature keeps only 1 (negative)",
    )  # fmt: skip
    p.add_argument("--train-list", help="NUS-WIDE: image list of the train split (one relative path per line)")
    p.add_argument("--train-labels", help="NUS-WIDE: 0/1 label matrix of the train split (one row per image)")
    p.add_argument("--test-list", help="NUS-WIDE: image list of the test split")
    p.add_argument("--test-labels", help="NUS-WIDE: 0/1 label matrix of the test split")
    p.add_argument("--concepts", help="NUS-WIDE: class names, one per line (e.g. Concepts81.txt)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = args.out or args.root
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    try:
        if args.dataset == "coco":
            phases, names = format_coco(args.root, args.keep_empty, say)
        elif args.dataset == "voc":
            phases, names = format_voc(args.root, args.difficult, say)
        elif args.dataset == "cub":
            phases, names = format_cub(args.root, say)
        else:
            phases, names = format_nuswide(args, say)
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.keep_empty:
        phases = {phase: data.drop_empty() for phase, data in phases.items()}
    write_formatted(out, phases, names)
    width = phases["train"].labels.shape[1]
    parts = [
        f"{phase} {len(d.paths)} images ({d.labels.sum(1).mean() if len(d.paths) else 0:.2f} labels/image"
        + (f", {d.dropped} without labels dropped)" if d.dropped else ")")
        for phase, d in phases.items()
    ]
    print(f"wrote {args.dataset} to {out}: {'; '.join(parts)}; {width} classes; {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
