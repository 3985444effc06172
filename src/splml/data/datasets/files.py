"""Inputs of a trained model outside its dataset: image files, a reBEN LMDB, a list of files.

Every input is prepared as the model's training prepared its data, from its data spec
(:class:`splml.io.checkpoint.DataSpec`) alone:

* ``rgb`` models: the file is decoded with PIL (grayscale and palette images converted to RGB;
  a TIFF PIL cannot decode is read with rasterio and must hold 3 bands of 8 bits), shown as the
  whole image resized to ``image_size`` with the training interpolation, scaled to [0, 1] and
  normalised (the very functions of :mod:`splml.data.datasets.images`);
* ``reben`` models: a multispectral GeoTIFF read with rasterio, its bands in the model's order
  (selected by name when the TIFF's band descriptions name them, else the file must hold exactly
  the model's bands in its order), raw values (S2 reflectance x 10000, S1 dB) checked against
  the spec's ``value_range``, normalised with the spec's statistics and resized to
  ``image_size`` (``resize`` when enlarging, area averaging when shrinking, as the reBEN reader);
  or the patches of a reBEN LMDB, read by the reBEN dataset itself.

An input that cannot be used (unreadable, wrong band count, a value outside the range, NaN) is a
:class:`~splml.io.errors.DataFormatError` naming the file and the problem; with
``on_error="skip"`` the item carries the message instead of an image and the batch lists it
(:func:`collate_inputs`), so the caller records it: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from splml.data.datasets.images import IMAGE_SUFFIXES, read_rgb, render_view, resample_filter, to_network_input
from splml.io.checkpoint import DataSpec
from splml.io.errors import DataFormatError
from splml.io.reben.format import METADATA_FILE, S1_BANDS, SPLITS

log = logging.getLogger(__name__)

ON_ERROR = ("error", "skip")
#: Files read as a list of inputs (one path per line, or a CSV with a ``path`` column).
LIST_SUFFIXES = (".txt", ".lst", ".csv")
_TIFF = (".tif", ".tiff")


def read_input(path: str | Path, spec: DataSpec) -> torch.Tensor:
    """One image file as the model's input: ``C x S x S`` float32 (see the module docstring)."""
    path = Path(path)
    if spec.input_format == "rgb":
        return to_network_input(np.asarray(render_view(_read_rgb_any(path), spec.image_size, None,
                                                       resample_filter(spec.resize)), dtype=np.uint8),
                                spec.mean, spec.std)  # fmt: skip
    if spec.input_format == "reben":
        return _multispectral(path, spec)
    raise ValueError(f"data spec input_format={spec.input_format!r}: expected 'rgb' or 'reben'")


def _read_rgb_any(path: Path) -> Any:
    try:
        return read_rgb(path)
    except DataFormatError:
        if path.suffix.lower() not in _TIFF or not path.is_file():
            raise
    from PIL import Image

    bands, dtype = _read_tiff(path)
    if bands.shape[0] != 3 or dtype != np.uint8:
        raise DataFormatError(f"{path}: {bands.shape[0]} band(s) of {dtype}; this model reads 8-bit RGB images")
    return Image.fromarray(np.ascontiguousarray(bands.transpose(1, 2, 0)), "RGB")


def _read_tiff(path: Path) -> tuple[np.ndarray, np.dtype]:
    """All bands of a (Geo)TIFF (``count x H x W``) and their dtype; the descriptions are read by the caller."""
    data, _ = _read_raster(path)
    return data, data.dtype


def _read_raster(path: Path) -> tuple[np.ndarray, list[str]]:
    """All bands of a (Geo)TIFF (``count x H x W``) and their descriptions ("" where unnamed)."""
    import warnings

    import rasterio

    try:
        with warnings.catch_warnings():
            # Pixels are what is read: a TIFF without a geotransform is as good as one with.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read(), [d or "" for d in src.descriptions]
    except rasterio.errors.RasterioIOError as exc:
        raise DataFormatError(f"{path}: cannot read the image ({exc})") from exc


def _multispectral(path: Path, spec: DataSpec) -> torch.Tensor:
    if path.suffix.lower() not in _TIFF:
        raise DataFormatError(
            f"{path}: this model reads {len(spec.bands)} reBEN bands {list(spec.bands)} from a multispectral GeoTIFF "
            f"(.tif), not a {path.suffix or 'file without suffix'}"
        )
    data, descriptions = _read_raster(path)
    wanted = list(spec.bands)
    if all(b in descriptions for b in wanted):
        data = data[[descriptions.index(b) for b in wanted]]
    elif data.shape[0] != len(wanted):
        raise DataFormatError(
            f"{path}: {data.shape[0]} band(s), but the model reads {len(wanted)}: {wanted} (in this order); name the "
            "bands in the TIFF's band descriptions to have them selected"
        )
    values = data.astype(np.float32)
    for c, band in enumerate(wanted):
        modality = "s1" if band in S1_BANDS else "s2"
        problem = _value_problem(values[c], spec.value_range.get(modality))
        if problem:
            raise DataFormatError(f"{path}: band {band} (channel {c}) {problem}")
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    values = np.subtract(values * np.float32(spec.value_scale), mean, dtype=np.float32)
    values /= std
    image = torch.from_numpy(values)
    size = spec.image_size
    if image.shape[-2:] != (size, size):
        mode = spec.resize if max(image.shape[-2:]) < size else "area"
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        image = F.interpolate(image[None], size=(size, size), mode=mode, **kwargs)[0]
    return image.contiguous()


def _value_problem(values: np.ndarray, bounds: Sequence[float] | None) -> str | None:
    if not np.isfinite(values).all():
        return "holds NaN or inf values"
    if bounds is not None and (values.min() < bounds[0] or values.max() > bounds[1]):
        return (
            f"has values in [{values.min():g}, {values.max():g}], outside the range the model was trained on "
            f"[{bounds[0]:g}, {bounds[1]:g}] (wrong units or scaling?)"
        )
    return None


# -- datasets ----------------------------------------------------------------------------------------
class ImageFilesDataset(torch.utils.data.Dataset):
    """Image files as model inputs: items ``{"image", "index"}``, or ``{"error", "index"}`` when skipping."""

    def __init__(self, paths: Sequence[Path], ids: Sequence[str], spec: DataSpec, on_error: str = "error") -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: choose one of {ON_ERROR}")
        self.paths, self.ids, self.spec, self.on_error = [Path(p) for p in paths], list(ids), spec, on_error

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return {"image": read_input(self.paths[index], self.spec), "index": index}
        except DataFormatError as exc:
            if self.on_error == "error":
                raise
            return {"error": str(exc), "index": index}


class ReBENPatchesDataset(torch.utils.data.Dataset):
    """The patches of a reBEN LMDB (those of its metadata file, optionally one split) as model inputs."""

    def __init__(
        self,
        root: Path,
        spec: DataSpec,
        *,
        metadata: Path | None = None,
        split: str | None = None,
        on_error: str = "error",
    ) -> None:
        from splml.data.datasets.reben import ReBENDataset
        from splml.io.reben.lmdb import find_lmdb_dir
        from splml.io.reben.metadata import read_metadata

        if spec.input_format != "reben":
            raise ValueError(
                f"{root}: a reBEN LMDB holds multispectral patches, but this model was trained on {spec.input_format} "
                f"images ({list(spec.bands)})"
            )
        if split is not None and split not in SPLITS:
            raise ValueError(f"split={split!r}: reBEN splits are {SPLITS}")
        lmdb_dir = find_lmdb_dir(root)
        metadata = Path(metadata) if metadata else _find_metadata(root, lmdb_dir)
        by_split = read_metadata(metadata)
        records = [r for s in SPLITS if split in (None, s) for r in by_split[s]]
        if not records:
            raise DataFormatError(f"{metadata}: no patch{'' if split is None else f' in split {split!r}'}")
        self.on_error = on_error
        # The split name only labels messages here: the records are what is read.
        self.patches = ReBENDataset(
            root, split or "test", bands=spec.bands, image_size=spec.image_size, upsampling=spec.resize,
            lmdb_path=lmdb_dir, metadata_path=metadata, records=records, value_range=spec.value_range,
        )  # fmt: skip
        self.ids = self.patches.ids

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return {"image": self.patches.read_bands(index, normalize=True), "index": index}
        except DataFormatError as exc:
            if self.on_error == "error":
                raise
            return {"error": str(exc), "index": index}


def _find_metadata(root: Path, lmdb_dir: Path) -> Path:
    for candidate in (root / METADATA_FILE, lmdb_dir.parent / METADATA_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {METADATA_FILE} next to the LMDB {lmdb_dir} (it names the patches and pairs their S2 and S1 keys): "
        "pass metadata=<file>"
    )


def collate_inputs(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch of the inputs that could be read (``image``, ``index``) and the ``failed`` ones (index, message)."""
    good = [item for item in items if "image" in item]
    return {
        "image": torch.stack([item["image"] for item in good]) if good else torch.empty(0),
        "index": torch.tensor([item["index"] for item in good], dtype=torch.long),
        "failed": [(int(item["index"]), str(item["error"])) for item in items if "image" not in item],
    }


# -- what an input argument names ----------------------------------------------------------------------
def input_kind(path: Path) -> str:
    """``lmdb`` (a reBEN root or LMDB folder), ``folder`` (image files), ``list`` (a file of paths) or ``file``."""
    if path.is_dir():
        if (path / "data.mdb").is_file() or any(path.glob("*/data.mdb")):
            return "lmdb"
        return "folder"
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    return "list" if path.suffix.lower() in LIST_SUFFIXES else "file"


def image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The image files below ``folder`` (any depth, sorted) and their ids (paths relative to ``folder``).

    Files with other suffixes are not read, and the log says how many and which.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning(
            "%s: %d file(s) without an image suffix %s not read (first: %s)",
            folder, len(others), IMAGE_SUFFIXES, [str(p.relative_to(folder)) for p in others[:5]],
        )  # fmt: skip
    if not images:
        raise DataFormatError(f"{folder}: no image file ({', '.join(IMAGE_SUFFIXES)}) in the folder or below")
    return images, [p.relative_to(folder).as_posix() for p in images]


def listed_files(list_file: Path) -> tuple[list[Path], list[str]]:
    """The files a list names (relative paths from the list's folder) and their ids.

    A ``.csv`` with a header has a ``path`` column and optionally an ``id`` column; any other list
    has one path per line (blank lines and lines starting with ``#`` are not entries).
    """
    base = list_file.parent
    if list_file.suffix.lower() == ".csv":
        with open(list_file, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "path" not in rows[0]:
            raise DataFormatError(f"{list_file}: a CSV list needs a header with a 'path' column (and optionally 'id')")
        entries = [(row["path"].strip(), (row.get("id") or row["path"]).strip(), n + 2) for n, row in enumerate(rows)]
    else:
        lines = list_file.read_text(encoding="utf-8").splitlines()
        entries = [(x.strip(), x.strip(), n + 1) for n, x in enumerate(lines) if x.strip() and not x.startswith("#")]
    if not entries:
        raise DataFormatError(f"{list_file}: lists no file")
    empty = [line for path, _, line in entries if not path]
    if empty:
        raise DataFormatError(f"{list_file}: line {empty[0]} has no path")
    ids = [i for _, i, _ in entries]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise DataFormatError(f"{list_file}: ids listed more than once: {repeated[:5]}")
    return [(base / p) for p, _, _ in entries], ids
