"""A tiny ILSVRC2012 tree in the real layouts (train folders, the three validation layouts, devkit, ReaL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: Four synsets, sorted: their class indices are 0..3.
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")
#: The devkit's ILSVRC2012_ID of each class: deliberately not the sorted order (as in the real devkit).
DEVKIT_IDS = {"n01491361": 1, "n01440764": 2, "n01484850": 3, "n01443537": 4}
#: ImageNet class (sorted index) of validation images 1..8.
VAL_CLASSES = (0, 1, 2, 3, 0, 1, 2, 3)
#: ReaL label sets of validation images 1..8: two empty (left out), multi-label ones, one relabelled.
REAL = ([0], [1, 2], [], [3, 0, 1], [0], [], [2, 3], [1])


def write_jpeg(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, mode: str = "RGB") -> Path:
    """A small random JPEG (or PNG data under a ``.JPEG`` name with ``mode="PNG"``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode == "PNG":
        image.save(path, format="PNG")
    else:
        image.convert(mode).save(path, format="JPEG")
    return path


def write_meta_mat(path: Path) -> Path:
    """A devkit ``meta.mat``: the four leaf synsets in ILSVRC2012_ID order, plus one inner node."""
    from scipy.io import savemat

    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
    leaves = sorted(DEVKIT_IDS, key=DEVKIT_IDS.get)
    rows = [(DEVKIT_IDS[w], w, f"words of {w}", "", 0) for w in leaves]
    rows.append((5, "n00001740", "entity", "", 2))  # an inner WordNet node: not a class
    synsets = np.array(rows, dtype=dtype).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"synsets": synsets})
    return path


def write_imagenet(
    root: Path, layout: str = "folders", n_train: int = 4, real: list | tuple | None = REAL, size: int = 40
) -> Path:
    """``root/train/<wnid>/*.JPEG`` and the validation set in ``layout``: folders, devkit or loc."""
    for c, wnid in enumerate(WNIDS):
        for k in range(n_train):
            write_jpeg(root / "train" / wnid / f"{wnid}_{k + 1}.JPEG", (size, size - 8), seed=100 * c + k)
    for i, c in enumerate(VAL_CLASSES, start=1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        folder = root / "val" / WNIDS[c] if layout == "folders" else root / "val"
        write_jpeg(folder / name, (size - 6, size), seed=1000 + i)
    if layout == "devkit":
        devkit = root / "ILSVRC2012_devkit_t12" / "data"
        write_meta_mat(devkit / "meta.mat")
        lines = [str(DEVKIT_IDS[WNIDS[c]]) for c in VAL_CLASSES]
        (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
    elif layout == "loc":
        rows = ["ImageId,PredictionString"]
        rows += [
            f"ILSVRC2012_val_{i:08d},{WNIDS[c]} 1 2 30 20 {WNIDS[c]} 4 4 9 9" for i, c in enumerate(VAL_CLASSES, 1)
        ]
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} words of {w}\n" for w in WNIDS))
    elif layout != "folders":
        raise ValueError(layout)
    if real is not None:
        (root / "real.json").write_text(json.dumps([list(x) for x in real]))
    return root


def imagenet_overrides(root: Path, *extra: str) -> list[str]:
    """Training overrides for the tiny tree: 4 classes, every image, small inputs, no workers."""
    return [
        "dataset=imagenet", f"dataset.root={root}", "dataset.num_classes=4", "labels=observed",
        "dataset.datamodule.val_fraction=0.25", "dataset.datamodule.image_size=32",
        "dataset.datamodule.batch_size=4", "dataset.datamodule.eval_batch_size=3", "dataset.datamodule.num_workers=0",
        "dataset.datamodule.pin_memory=false", "dataset.datamodule.persistent_workers=false", "dataset.scl_topk=2",
        "backbone=resnet10t", *extra,
    ]  # fmt: skip
