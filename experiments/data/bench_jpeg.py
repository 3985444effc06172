"""JPEG decoding throughput for ImageNet-sized files: which decoder the ImageNet dataset uses, and why.

Builds a set of ImageNet-like JPEGs (sizes drawn from a mix like ILSVRC2012's: most images about
500 x 375 or 375 x 500, a tail of 1-3 megapixel photos; quality 90) from the photographs that
ship with matplotlib and scikit-learn (crops at random positions and scales, so the content is
real photographic texture, not noise), then times, in one process with one thread (what one
DataLoader worker does on one core):

* decoders, file bytes -> H x W x 3 uint8 RGB at full size: PIL (``Image.open``, ``convert``),
  ``torchvision.io.decode_jpeg`` (libjpeg-turbo), OpenCV ``cv2.imdecode`` (+ BGR -> RGB);
* reduced-size decoding (the DCT scaling of libjpeg, which skips most of the work): PIL's
  ``Image.draft`` asking for at least 256 px on the short side (what a 224 px centre crop after a
  256 px resize needs); it only helps images at least twice that size;
* the dataset's decoder (:func:`splml.data.datasets.imagenet.decode_rgb`: libjpeg-turbo through
  torchvision, then a PIL image for the crop);
* the dataset's item pipeline (``splml.data.datasets.imagenet``): a training item (recorded
  random resized crop + flip at 224 px, normalised tensor) and an evaluation item (resize,
  centre crop 224 px), one image file read from the page cache per item.

Methods alternate round by round; CPU time (``time.process_time``) is the verdict because the
cores are shared. Writes the table into this folder's README.md (block ``jpeg``)::

    python experiments/data/bench_jpeg.py [--images 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from PIL import Image

from splml.utils.markdown import write_generated_block

HERE = Path(__file__).resolve().parent
#: (width, height, weight): a mix shaped like ILSVRC2012's image sizes (most ~500 px on the long side).
SIZES = ((500, 375, 0.40), (375, 500, 0.15), (500, 333, 0.15), (500, 500, 0.08), (333, 500, 0.07),
         (800, 600, 0.07), (1280, 960, 0.05), (2048, 1536, 0.03))  # fmt: skip


def photo_sources() -> list[Image.Image]:
    """The photographs shipped with matplotlib and scikit-learn (real JPEG content)."""
    import matplotlib
    import sklearn

    paths = [
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
    ]
    return [Image.open(p).convert("RGB") for p in paths if p.is_file()]


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs (quality 90) of ImageNet-like sizes cut from the source photographs."""
    rng = np.random.default_rng(seed)
    sources = photo_sources()
    weights = np.array([w for *_, w in SIZES])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        width, height, _ = SIZES[rng.choice(len(SIZES), p=weights / weights.sum())]
        src = sources[n % len(sources)]
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(src.width * scale), int(src.height * scale)
        x, y = int(rng.integers(0, src.width - cw + 1)), int(rng.integers(0, src.height - ch + 1))
        image = src.crop((x, y, x + cw, y + ch)).resize((width, height), Image.Resampling.BICUBIC)
        path = folder / f"img_{n:05d}.JPEG"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def decoders() -> dict[str, Callable[[Path], object]]:
    import cv2
    from torchvision.io import ImageReadMode, decode_jpeg

    from splml.data.datasets.imagenet import decode_rgb

    cv2.setNumThreads(1)

    def pil(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    def pil_draft(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            img.draft("RGB", (256, 256))
            return np.asarray(img.convert("RGB"))

    def torchvision_io(path: Path) -> torch.Tensor:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return decode_jpeg(data, mode=ImageReadMode.RGB)

    def opencv(path: Path) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    return {
        "PIL (full size)": pil,
        "torchvision.io.decode_jpeg (full size)": torchvision_io,
        "OpenCV imdecode (full size)": opencv,
        "PIL draft (>= 256 px short side)": pil_draft,
        "splml decode_rgb (the dataset's decoder, full size)": decode_rgb,
    }


def pipelines(paths: list[Path]) -> dict[str, Callable[[Path], object]]:
    """The dataset's training and evaluation items, one path at a time."""
    from splml.data.datasets.imagenet import ImageNetDataset, ImageNetTrainAugment

    n = len(paths)
    targets = np.zeros((n, 2), dtype=np.uint8)
    targets[:, 0] = 1
    ids = [p.name for p in paths]
    index = {p: i for i, p in enumerate(paths)}
    train = ImageNetDataset(paths, targets, ids, transform=ImageNetTrainAugment(224, crop_scale=(0.08, 1.0)))
    evaluation = ImageNetDataset(paths, targets, ids, image_size=224, eval_crop_fraction=224 / 256)
    seeds = iter(range(10**9))
    return {
        "train item (crop + flip, 224 px)": lambda p: train[(index[p], next(seeds), False)],
        "eval item (resize 256, centre crop 224)": lambda p: evaluation[index[p]],
    }


def time_method(fn: Callable[[Path], object], paths: list[Path]) -> tuple[float, float]:
    """(CPU s, wall s) for decoding every path once."""
    c0, w0 = time.process_time(), time.perf_counter()
    for p in paths:
        fn(p)
    return time.process_time() - c0, time.perf_counter() - w0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="jpeg-bench-"))
    try:
        paths = make_jpegs(tmp, args.images)
        sizes = [p.stat().st_size for p in paths]
        pixels = [Image.open(p).size for p in paths]
        methods = {**decoders(), **pipelines(paths)}
        for p in paths:  # into the page cache, and one warm-up call per method
            p.read_bytes()
        for fn in methods.values():
            fn(paths[0])
        cpu: dict[str, list[float]] = {m: [] for m in methods}
        wall: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.rounds):
            order = list(methods)[r % len(methods) :] + list(methods)[: r % len(methods)]
            for name in order:
                c, w = time_method(methods[name], paths)
                cpu[name].append(c / len(paths))
                wall[name].append(w / len(paths))
                print(f"round {r} {name}: {1000 * c / len(paths):.2f} ms CPU / image", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(cpu["PIL (full size)"])
    lines = [
        (
            f"Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores ({platform.machine()}), one process, "
            f"one thread (`torch.set_num_threads(1)`, `cv2.setNumThreads(1)`), Pillow {Image.__version__}, "
            f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end (the cores are shared: CPU "
            "time is the verdict)."
        ),
        "",
        (
            f"Command: `python experiments/data/bench_jpeg.py --images {args.images} --rounds {args.rounds}` "
            f"(wall time {(time.time() - started) / 60:.1f} min)."
        ),
        "",
        (
            f"{len(paths)} JPEGs (quality 90), mean {np.mean([w * h for w, h in pixels]) / 1e6:.2f} megapixels, "
            f"mean file {np.mean(sizes) / 1024:.0f} KiB (ILSVRC2012 train: about 110 KiB per file), read from the "
            "page cache; medians of the rounds."
        ),
        "",
        "| method | CPU ms / image | images/s per core (CPU) | wall ms / image | vs PIL (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in methods:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        lines.append(f"| {name} | {1000 * c:.2f} | {1 / c:,.0f} | {1000 * w:.2f} | x{base / c:.2f} |")
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_generated_block(HERE / "README.md", "jpeg", block, heading="## ImageNet JPEG decoding")


if __name__ == "__main__":
    main()
