"""The images to annotate, and how each is shown.

The list is exactly what ``labels=manual`` asks a label for with the same dataset options,
taken from the datamodule itself rather than re-derived:

* RGB image datasets (AID and the other image-folder and SPML-file sets): the official
  training set as the reader loads it (``ImageDataModule.load_sources``), in its order. The
  label source observes this pool before validation is carved out of it, so one manual file
  serves every split seed and validation fraction; validation images are annotated too.
* reBEN-format data (``dataset=ben``, ``dataset=synthetic``): the training split of the
  metadata, after ``max_samples.train``, in metadata order, which is what the label source
  observes there. Patches are shown as a band composite (true colour B04, B03, B02; false
  colour B08, B04, B03; SWIR B12, B8A, B04; S1 VV, VH, VV-VH, as far as the LMDB has the
  bands) with a per-band percentile stretch, and the reference map (when the LMDB has maps)
  can be shown beside.

Every item is drawn as a :class:`View` (composite and contrast stretch) that the page chooses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from splml.data import display
from splml.data.datamodules.images import ImageDataModule
from splml.data.datamodules.reben import ReBENDataModule
from splml.data.datasets.images import read_rgb
from splml.data.datasets.reben import ReBENDataset
from splml.io.errors import DataFormatError
from splml.io.reben.format import CLC_TO_CLASS, PATCH_SIZE

log = logging.getLogger(__name__)

#: Colour of each reBEN class in reference-map renderings (CLASS_NAMES order), after the CORINE
#: Land Cover legend colour of the class's first CLC code; marine waters darker than CORINE's
#: near-white so that it stands out from beaches.
REBEN_CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 0, 77), (204, 77, 242), (255, 255, 168), (230, 128, 0), (230, 230, 77), (255, 230, 77),
    (230, 204, 77), (242, 204, 166), (128, 255, 0), (0, 166, 0), (77, 255, 0), (204, 242, 77),
    (166, 255, 128), (166, 242, 0), (230, 230, 230), (166, 166, 255), (204, 204, 255), (0, 204, 242),
    (0, 90, 200),
)  # fmt: skip
#: Pixels whose CLC code belongs to no class.
UNLABELLED_COLOUR: tuple[int, int, int] = (60, 60, 60)


@dataclass(frozen=True)
class View:
    """How an image is drawn: a band ``composite`` (one of the items' ``composites``) and a
    per-band percentile ``stretch`` (None: an RGB image as it is, multispectral bands from
    their minimum to their maximum)."""

    composite: str
    stretch: tuple[float, float] | None

    @property
    def stretch_text(self) -> str:
        return "off" if self.stretch is None else "-".join(f"{v:g}" for v in self.stretch)


#: Contrast choices offered on the page (besides off and the dataset's default), low-high percentiles.
STRETCH_CHOICES: tuple[tuple[float, float], ...] = ((0.5, 99.5), (2.0, 98.0), (5.0, 95.0))
#: Band composites of multispectral data: name -> (label on the page, bands shown as red, green, blue;
#: S1's blue is VV - VH, the cross-polarisation ratio in dB).
COMPOSITES: dict[str, tuple[str, tuple[str, ...]]] = {
    "true": ("True colour (B04 B03 B02)", ("B04", "B03", "B02")),
    "nir": ("False colour NIR-R-G (B08 B04 B03)", ("B08", "B04", "B03")),
    "swir": ("SWIR (B12 B8A B04)", ("B12", "B8A", "B04")),
    "s1": ("S1 VV / VH (VV VH VV-VH)", ("VV", "VH")),
}


def parse_stretch(text: str) -> tuple[float, float] | None:
    """``"off"`` or ``"<low>-<high>"`` percentiles (ValueError otherwise)."""
    if text == "off":
        return None
    low, sep, high = text.partition("-")
    if not sep or len(text) > 16:
        raise ValueError(f"stretch must be 'off' or '<low>-<high>' percentiles, got {text!r}")
    values = (float(low), float(high))
    display.check_stretch(*values)
    return values


@dataclass
class AnnotationItems:
    """Ids and class names of the images to annotate, with a renderer for each.

    ``render(i, view)`` gives the RGB image shown for item ``i`` drawn as ``view`` (a
    composite of ``composites``, name -> label); ``class_map(i)``, when the data has reference
    maps, an H x W array of class indices (-1 where no class applies), drawn with
    ``class_colours``.
    """

    ids: tuple[str, ...]
    class_names: tuple[str, ...]
    description: str
    render: Callable[[int, View], Image.Image]
    class_map: Callable[[int], np.ndarray] | None = None
    class_colours: tuple[tuple[int, int, int], ...] = field(default_factory=tuple)
    composites: dict[str, str] = field(default_factory=lambda: {"rgb": "Colour"})
    default_view: View = View("rgb", None)
    #: How the page names ``stretch=off``: "as is" for RGB images, "min-max" for bands.
    stretch_off_label: str = "off (as stored)"

    def __post_init__(self) -> None:
        if not self.ids:
            raise ValueError(f"{self.description}: no image to annotate")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{self.description}: image ids repeat; they must name images uniquely")
        for text in (*self.ids, *self.class_names):
            if any(ch in text for ch in "\r\n"):
                raise ValueError(f"{self.description}: {text!r} contains a line break")
        if self.default_view.composite not in self.composites:
            raise ValueError(f"{self.description}: default composite {self.default_view.composite!r} not offered")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_maps(self) -> bool:
        return self.class_map is not None

    def picture(self, i: int, view: View | None = None) -> Image.Image:
        """Item ``i`` drawn as ``view`` (default: ``default_view``)."""
        return self.render(i, view or self.default_view)

    def view(self, composite: str | None, stretch: str | None) -> View:
        """The view named by a request (ValueError for a composite or stretch that is not offered)."""
        composite = composite or self.default_view.composite
        if composite not in self.composites:
            raise ValueError(f"unknown band composite {composite!r}; choose one of {sorted(self.composites)}")
        return View(composite, self.default_view.stretch if stretch is None else parse_stretch(stretch))

    def view_choices(self) -> dict[str, Any]:
        """What the page offers: the composites, the contrast stretches and the default."""
        stretches = [View("", None), *(View("", s) for s in STRETCH_CHOICES)]
        if self.default_view.stretch is not None and self.default_view.stretch not in STRETCH_CHOICES:
            stretches.append(View("", self.default_view.stretch))
        return {
            "composites": [{"name": n, "label": label} for n, label in self.composites.items()],
            "stretches": [
                {
                    "name": v.stretch_text,
                    "label": self.stretch_off_label if v.stretch is None else f"{v.stretch_text} %",
                }
                for v in stretches
            ],
            "default": {"composite": self.default_view.composite, "stretch": self.default_view.stretch_text},
        }

    def subset(self, indices: Sequence[int], description: str) -> AnnotationItems:
        """The items at ``indices`` only (a shard), drawn as before."""
        keep = [int(i) for i in indices]
        render, class_map = self.render, self.class_map
        return replace(
            self,
            ids=tuple(self.ids[i] for i in keep),
            description=description,
            render=lambda i, view: render(keep[i], view),
            class_map=None if class_map is None else (lambda i: class_map(keep[i])),
        )

    def render_map(self, i: int) -> Image.Image:
        """The reference map of item ``i`` in class colours."""
        if self.class_map is None:
            raise ValueError(f"{self.description} has no reference maps")
        classes = self.class_map(i)
        palette = np.array([*self.class_colours, UNLABELLED_COLOUR], dtype=np.uint8)
        return Image.fromarray(palette[np.where(classes < 0, len(self.class_colours), classes)])

    def map_classes(self, i: int) -> list[int]:
        """Class indices present in the reference map of item ``i``, most pixels first; -1 stands
        for pixels of no class."""
        if self.class_map is None:
            return []
        values, counts = np.unique(self.class_map(i), return_counts=True)
        return [int(values[k]) for k in np.argsort(-counts, kind="stable")]


def percentile_stretch(bands: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """The page's rendering of C x H x W values (:func:`splml.data.display.percentile_stretch`); a flat band is black."""
    return display.percentile_stretch(bands, low, high, flat=0.0)


def _clc_lookup() -> np.ndarray:
    lookup = np.full(2**16, -1, dtype=np.int16)
    for code, cls in CLC_TO_CLASS.items():
        lookup[code] = cls
    return lookup


def items_from_datamodule(datamodule: Any, stretch: Sequence[float] = (2.0, 98.0)) -> AnnotationItems:
    """The annotation items of a datamodule built from a dataset config (see the module docstring)."""
    if isinstance(datamodule, ImageDataModule):
        pool, _ = datamodule.load_sources()
        paths = pool.paths

        def render(i: int, view: View) -> Image.Image:
            image = read_rgb(paths[i])
            if view.stretch is None:
                return image
            return Image.fromarray(percentile_stretch(np.asarray(image).transpose(2, 0, 1), *view.stretch))

        return AnnotationItems(
            ids=tuple(pool.ids),
            class_names=tuple(datamodule.class_names),
            description=f"{datamodule.display_name} official training set ({Path(datamodule.root).name})",
            render=render,
        )
    if isinstance(datamodule, ReBENDataModule):
        return _reben_items(datamodule, stretch)
    raise TypeError(f"{type(datamodule).__name__} is not a datamodule splml.annotate knows how to show")


def _reben_items(datamodule: ReBENDataModule, stretch: Sequence[float]) -> AnnotationItems:
    datamodule.prepare_data()
    datamodule.setup("fit")
    train: ReBENDataset = datamodule.datasets["train"]
    low, high = (float(v) for v in stretch)
    display.check_stretch(low, high)  # a bad stretch fails now, not at the first image
    root = datamodule.resolve_root()
    readers = {}
    for name, (_, bands) in COMPOSITES.items():
        reader = ReBENDataset(
            root, "train", bands=bands, image_size=PATCH_SIZE, normalize=False, lmdb_path=train.lmdb_path,
            metadata_path=train.metadata_path, records=train.records, value_range=train.value_range,
        )  # fmt: skip
        try:
            reader.read_bands(0)
        except (KeyError, DataFormatError) as exc:  # an LMDB without S1 (or some bands) offers fewer composites
            log.info("band composite %r is not offered: %s has no %s (%s)", name, train.lmdb_path, bands, exc)
            continue
        readers[name] = reader
    if "true" not in readers:
        raise DataFormatError(f"{train.lmdb_path}: the patches lack the bands of a true-colour image (B04, B03, B02)")
    lookup = _clc_lookup()

    def render(i: int, view: View) -> Image.Image:
        bands = readers[view.composite].read_bands(i).numpy()
        if view.composite == "s1":
            bands = np.concatenate([bands, bands[:1] - bands[1:2]])
        return Image.fromarray(percentile_stretch(bands, *(view.stretch or (0.0, 100.0))))

    def class_map(i: int) -> np.ndarray:
        return lookup[train.read_reference_map(i)]

    try:
        train.read_reference_map(0)
        has_maps = True
    except (KeyError, DataFormatError) as exc:
        log.info("no reference maps in %s (%s): the map view is off", train.lmdb_path, exc)
        has_maps = False
    return AnnotationItems(
        ids=tuple(r.patch_id for r in train.records),
        class_names=tuple(datamodule.class_names),
        description=f"reBEN-format training split ({root.name})",
        render=render,
        class_map=class_map if has_maps else None,
        class_colours=REBEN_CLASS_COLOURS,
        composites={name: COMPOSITES[name][0] for name in readers},
        default_view=View("true", (low, high)),
        stretch_off_label="min-max",
    )
