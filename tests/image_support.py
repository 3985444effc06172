"""Tiny image files in the real layouts (images, the AID tree and label CSV) and the data_prep scripts, for tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from splml.data.datasets.image_folders import AID_CLASSES

REPO = Path(__file__).resolve().parents[1]


def data_prep_script(name: str) -> ModuleType:
    """The script ``data_prep/<name>.py`` loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, mode: str = "RGB") -> Path:
    """A small random image in the format given by the suffix (JPEG, PNG, TIFF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def aid_label_rows(stems: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Random 17-label rows with at least one positive each."""
    rng = np.random.default_rng(seed)
    rows = {}
    for k, stem in enumerate(stems):
        row = (rng.random(len(AID_CLASSES)) < 0.3).astype(np.uint8)
        row[k % len(AID_CLASSES)] = 1
        rows[stem] = row
    return rows


def write_aid_csv(path: Path, rows: dict[str, np.ndarray], header: bool = True) -> Path:
    lines = ["IMAGE\\LABEL," + ",".join(AID_CLASSES)] if header else []
    lines += [stem + "," + ",".join(str(int(v)) for v in row) for stem, row in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_aid_tree(root: Path, n_train: int = 10, n_test: int = 4, size: int = 24) -> dict[str, np.ndarray]:
    """AID-multilabel layout: images_tr/<Scene>/<scene>_<n>.jpg, images_test/..., multilabel.csv."""
    scenes = ("Airport", "Beach", "StorageTanks")
    stems = []
    for folder, count, offset in (("images_tr", n_train, 0), ("images_test", n_test, 100)):
        for k in range(count):
            scene = scenes[k % len(scenes)]
            stem = f"{scene.lower()}_{offset + k + 1}"
            write_image(root / folder / scene / f"{stem}.jpg", (size, size), seed=offset + k)
            stems.append(stem)
    rows = aid_label_rows(stems)
    write_aid_csv(root / "multilabel.csv", rows)
    return rows
