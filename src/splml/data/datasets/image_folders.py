"""Image folders + a label table (AID-multilabel, ML-AID, DLRSD, WHDLD): the readers of both.

These collections ship as image files in folders and one table whose first column names the
image (its file stem) and whose other columns hold 0/1 per class. :func:`index_images` indexes
the folders and :func:`read_label_table` parses the table; matching the two and reporting the
mismatches is :class:`splml.data.datamodules.image_folders.LabelTableDataModule`'s work.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from splml.data.datasets.images import IMAGE_SUFFIXES
from splml.io.errors import DataFormatError

#: AID-multilabel's 17 labels in the order of its label file (shared with UC Merced multi-label / DLRSD).
AID_CLASSES: Final[tuple[str, ...]] = (
    "airplane", "bare-soil", "buildings", "cars", "chaparral", "court", "dock", "field", "grass",
    "mobile-home", "pavement", "sand", "sea", "ship", "tanks", "trees", "water",
)  # fmt: skip
#: The 30 AID scene folders (the parent folder of every image).
AID_SCENES: Final[tuple[str, ...]] = (
    "Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center", "Church", "Commercial",
    "DenseResidential", "Desert", "Farmland", "Forest", "Industrial", "Meadow", "MediumResidential",
    "Mountain", "Park", "Parking", "Playground", "Pond", "Port", "RailwayStation", "Resort", "River",
    "School", "SparseResidential", "Square", "Stadium", "StorageTanks", "Viaduct",
)  # fmt: skip
#: WHDLD's 6 classes in the order of its pixel values 1..6 (and of its label table's columns).
WHDLD_CLASSES: Final[tuple[str, ...]] = ("building", "road", "pavement", "vegetation", "bare soil", "water")


def normalise_name(name: str) -> str:
    """Class names compared without case, spaces, hyphens or underscores ("bare-soil" == "Bare soil")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def image_stem(cell: str) -> str:
    """The image id of a table cell: the stem, with a known image suffix removed if present."""
    cell = cell.strip()
    return cell[: -len(Path(cell).suffix)] if Path(cell).suffix.lower() in IMAGE_SUFFIXES else cell


@dataclass(frozen=True)
class LabelTable:
    """A parsed label table: image ids, their N x L 0/1 labels, and the source line of each row."""

    path: Path
    ids: tuple[str, ...]
    matrix: np.ndarray
    lines: tuple[int, ...]


def _table_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of a CSV / TSV / whitespace table, or of a spreadsheet's first sheet."""
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            import pandas as pd

            frame = pd.read_excel(path, header=None, dtype=str)
        except ImportError as exc:
            raise DataFormatError(
                f"{path}: reading a spreadsheet needs openpyxl (pip install openpyxl); or save it as CSV "
                "and point labels_file at the CSV"
            ) from exc
        rows = [(k + 1, ["" if isinstance(v, float) else str(v) for v in row]) for k, row in enumerate(frame.values)]
    else:
        text = path.read_text(encoding="utf-8-sig")
        lines = text.splitlines()
        first = next((line for line in lines if line.strip()), "")
        if "," in first or "\t" in first:
            reader = csv.reader(lines, delimiter="," if "," in first else "\t")
            rows = [(k + 1, row) for k, row in enumerate(reader)]
        else:
            rows = [(k + 1, line.split()) for k, line in enumerate(lines)]
    out = []
    for line, cells in rows:
        cells = [c.strip() for c in cells]
        while cells and not cells[-1]:
            cells.pop()  # a trailing delimiter (spreadsheet exports) is not a column
        if cells:
            out.append((line, cells))
    return out


def _binary(cell: str) -> int | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


def read_label_table(path: str | Path, class_names: Sequence[str]) -> LabelTable:
    """Parse a label table whose first column is the image stem and the others 0/1 per class.

    A header row is recognised when its label cells are not all 0/1 (AID's reads
    ``IMAGE\\LABEL,airplane,...``); its class names are matched to ``class_names`` ignoring case
    and punctuation, so a file with the columns in another order is read correctly. Without a
    header the columns are taken in ``class_names`` order. A row of the wrong width, a value
    other than 0/1, an unknown column name or a repeated image is an error naming the file and
    the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    width = len(class_names)
    rows = _table_rows(path)
    if not rows:
        raise DataFormatError(f"{path}: the label file is empty")
    column_of = list(range(width))  # file column k (after the id) -> class index
    first_line, first = rows[0]
    if any(_binary(c) is None for c in first[1:]) or len(first) == 1:
        header = first[1:]
        if len(header) != width:
            raise DataFormatError(
                f"{path}, line {first_line}: the header names {len(header)} classes, expected {width}: {list(class_names)}"
            )
        index_of = {normalise_name(n): k for k, n in enumerate(class_names)}
        unknown = [h for h in header if normalise_name(h) not in index_of]
        if unknown or len({normalise_name(h) for h in header}) != width:
            raise DataFormatError(
                f"{path}, line {first_line}: header columns {unknown or header} do not match the classes "
                f"{list(class_names)}"
            )
        column_of = [index_of[normalise_name(h)] for h in header]
        rows = rows[1:]
    ids: list[str] = []
    lines: list[int] = []
    matrix = np.zeros((len(rows), width), dtype=np.uint8)
    seen: dict[str, int] = {}
    for r, (line, cells) in enumerate(rows):
        if len(cells) != width + 1:
            raise DataFormatError(
                f"{path}, line {line}: expected {width + 1} fields (image id + {width} labels), got {len(cells)}"
            )
        sid = image_stem(cells[0])
        if not sid:
            raise DataFormatError(f"{path}, line {line}: empty image id")
        if sid in seen:
            raise DataFormatError(f"{path}, line {line}: image {sid!r} already has a row (line {seen[sid]})")
        seen[sid] = line
        for k, cell in enumerate(cells[1:]):
            value = _binary(cell)
            if value is None:
                raise DataFormatError(
                    f"{path}, line {line} (image {sid}): value {cell!r} for class "
                    f"{class_names[column_of[k]]!r} is not 0 or 1"
                )
            matrix[r, column_of[k]] = value
        ids.append(sid)
        lines.append(line)
    return LabelTable(path, tuple(ids), matrix, tuple(lines))


def index_images(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` (recursively) by stem, in sorted path order.

    Hidden files (``._x.jpg`` from macOS archives) are ignored; two images with one stem are an
    error, since the label table could not tell them apart.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith(".") or not path.is_file():
            continue
        if path.stem in found:
            raise DataFormatError(f"two images share the stem {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found
