"""Using a trained model: loading it from its checkpoint alone, predicting files and LMDBs, exporting it.

One small run is trained per module; its test patches are the "real inputs": written as GeoTIFFs
(raw band values, as a user has them), read from its LMDB, and compared with what the module gives
on the same patches as the training pipeline prepares them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import splml
from splml.builders import build_datamodule
from splml.config import config_dir, register_resolvers
from splml.export import export, run_export
from splml.io.checkpoint import file_sha256, load_checkpoint
from splml.io.errors import DataFormatError
from splml.io.reben.format import BAND_SETS
from splml.module import SPMLModule
from splml.predict import predict
from splml.retrieval_module import RetrievalModule
from splml.train import train

from .helpers import compose_train
from .image_support import REPO, write_image

#: Test patches written as GeoTIFFs and compared.
N_PATCHES = 6


def write_geotiff(path: Path, bands: np.ndarray, names: list[str] | None) -> Path:
    """A float32 GeoTIFF of ``bands`` (C x H x W), with the band names as band descriptions when given."""
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": bands.shape[2], "height": bands.shape[1], "count": bands.shape[0]}
    with rasterio.open(path, "w", dtype="float32", **profile) as dst:
        dst.write(bands.astype(np.float32))
        for k, name in enumerate(names or []):
            dst.set_band_description(k + 1, name)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A trained run, its test patches (raw bands, network inputs) and the module's probabilities for them."""
    tmp = tmp_path_factory.mktemp("use_model")
    cfg = compose_train(tmp / "run", "trainer.max_epochs=1", cache_dir=tmp / "cache")
    train(cfg)
    ckpt = tmp / "run" / "checkpoints" / "best.ckpt"
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    raw = [test.read_bands(i, normalize=False).numpy() for i in range(N_PATCHES)]
    inputs = torch.stack([test[i]["image"] for i in range(N_PATCHES)])
    module = splml.load_model(ckpt)
    with torch.no_grad():
        probs = module(inputs)["logits"].sigmoid().numpy()
    return SimpleNamespace(
        tmp=tmp, ckpt=ckpt, cfg=cfg, datamodule=datamodule, root=datamodule.root, ids=test.ids[:N_PATCHES], raw=raw,
        inputs=inputs, probs=probs, bands=list(test.bands),
    )  # fmt: skip


# -- loading ------------------------------------------------------------------------------------------
def test_the_model_comes_back_from_its_checkpoint_alone(run, tmp_path):
    """The dataset is gone and the checkpoint moved: the module, its classes, bands and outputs are all there."""
    ckpt = shutil.copy(run.ckpt, tmp_path / "model.ckpt")
    hidden = run.root.with_name(run.root.name + ".hidden")
    run.root.rename(hidden)
    try:
        module = splml.load_model(ckpt)
    finally:
        hidden.rename(run.root)
    assert isinstance(module, SPMLModule) and not module.training
    spec = module.data_spec
    assert spec.class_names == tuple(run.datamodule.class_names)
    assert list(spec.bands) == run.bands == list(BAND_SETS["all"])
    assert (spec.image_size, spec.resize, spec.input_format, spec.task) == (120, "nearest", "reben", "classification")
    assert spec.backbone == "resnet10t" and spec.head == "SpatialLinearHead"
    with torch.no_grad():
        probs = module.predict_step({"image": run.inputs})["probs"].numpy()
    np.testing.assert_allclose(probs, run.probs, atol=1e-6)
    again = SPMLModule.load_from_checkpoint(ckpt)
    with torch.no_grad():
        np.testing.assert_allclose(again(run.inputs)["logits"].sigmoid().numpy(), run.probs, atol=1e-6)
    with pytest.raises(TypeError, match="holds a SPMLModule, not a RetrievalModule"):
        RetrievalModule.load_from_checkpoint(ckpt)


def test_an_older_checkpoint_without_data_spec_loads_from_its_stored_config(run, tmp_path):
    """Its spec is read from the stored datamodule config; the start weights it names need not exist."""
    ckpt = dict(load_checkpoint(run.ckpt))
    del ckpt["splml_data_spec"]
    config = json.loads(json.dumps(ckpt["splml_config"]))
    config["backbone"]["weights_path"] = str(tmp_path / "gone" / "resnet10t.safetensors")
    ckpt["splml_config"] = config
    torch.save(ckpt, tmp_path / "old.ckpt")
    module = splml.load_model(tmp_path / "old.ckpt")
    assert module.data_spec.diff(splml.load_model(run.ckpt).data_spec) == []
    with torch.no_grad():
        np.testing.assert_allclose(module(run.inputs)["logits"].sigmoid().numpy(), run.probs, atol=1e-6)


def test_trainer_predict_gives_the_probabilities(run):
    import lightning as L

    module = splml.load_model(run.ckpt)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, dataloaders=run.datamodule.test_dataloader())
    probs = torch.cat([b["probs"] for b in batches]).numpy()
    order = torch.cat([b["index"] for b in batches]).numpy()
    assert probs.shape == (len(run.datamodule.datasets["test"]), 19) and sorted(order) == list(range(len(order)))
    np.testing.assert_allclose(probs[np.argsort(order)][:N_PATCHES], run.probs, atol=1e-5)


# -- predicting -----------------------------------------------------------------------------------------
def predict_config(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("predict", overrides=["progress=false", *overrides])


def patch_folder(run, folder: Path) -> Path:
    """The test patches as GeoTIFFs (band names in the descriptions, all bands of the file in another order),
    an unreadable .tif and a 3-band TIFF without names."""
    for i in range(N_PATCHES):
        reversed_order = list(reversed(run.bands))
        write_geotiff(folder / f"patch_{i}.tif", run.raw[i][::-1], reversed_order)  # selected by name
    (folder / "zz_broken.tif").write_bytes(b"not a tiff at all")
    write_geotiff(folder / "zz_three_bands.tif", run.raw[0][:3], None)
    return folder


def test_predict_a_folder_of_geotiffs_as_training_prepares_its_data(run, tmp_path):
    folder = patch_folder(run, tmp_path / "patches")
    out = tmp_path / "pred.csv"
    with pytest.raises(DataFormatError, match=r"zz_broken.tif: cannot read the image"):
        predict(predict_config(f"ckpt={run.ckpt}", f"input={folder}", f"out={out}"))
    assert not out.exists()
    predict(predict_config(f"ckpt={run.ckpt}", f"input={folder}", f"out={out}", "on_error=skip", "batch_size=4"))
    table = pd.read_csv(out)
    assert list(table["id"]) == [f"patch_{i}.tif" for i in range(N_PATCHES)]
    classes = splml.load_model(run.ckpt).data_spec.class_names
    np.testing.assert_allclose(table[[f"prob/{c}" for c in classes]].to_numpy(), run.probs, atol=1e-5)
    # top_k: the 3 most probable classes; labels: those at or above the run's optim.threshold (0.5)
    top = [";".join(classes[c] for c in np.argsort(-p, kind="stable")[:3]) for p in run.probs]
    assert list(table["top_k"]) == top
    labels = [";".join(classes[c] for c in np.flatnonzero(p >= 0.5)) for p in run.probs]
    assert list(table["labels"].fillna("")) == labels
    skipped = pd.read_csv(tmp_path / "pred_skipped.csv")
    assert list(skipped["id"]) == ["zz_broken.tif", "zz_three_bands.tif"]
    assert "cannot read the image" in skipped["reason"][0]
    assert "3 band(s), but the model reads 12" in skipped["reason"][1]


def test_predict_a_reben_lmdb_split_and_a_list_file(run, tmp_path):
    out = tmp_path / "test.parquet"
    predict(predict_config(f"ckpt={run.ckpt}", f"input={run.root}", "split=test", f"out={out}", "top_k=2"))
    table = pd.read_parquet(out)
    test = run.datamodule.datasets["test"]
    assert list(table["id"]) == test.ids and "path" not in table
    classes = splml.load_model(run.ckpt).data_spec.class_names
    np.testing.assert_allclose(table[[f"prob/{c}" for c in classes]].to_numpy()[:N_PATCHES], run.probs, atol=1e-5)
    assert all(len(top) == 2 for top in table["top_k"])  # lists in parquet
    folder = patch_folder(run, tmp_path / "patches")
    listing = tmp_path / "list.txt"
    listing.write_text("# two patches\npatches/patch_3.tif\n\npatches/patch_1.tif\n")
    predict(predict_config(f"ckpt={run.ckpt}", f"input={listing}", f"out={tmp_path / 'listed.csv'}"))
    listed = pd.read_csv(tmp_path / "listed.csv")
    assert list(listed["id"]) == ["patches/patch_3.tif", "patches/patch_1.tif"]
    assert list(listed["path"]) == [str(folder / "patch_3.tif"), str(folder / "patch_1.tif")]
    np.testing.assert_allclose(listed[[f"prob/{c}" for c in classes]].to_numpy(), run.probs[[3, 1]], atol=1e-5)


def test_a_metadata_file_listing_a_subset_predicts_that_subset_in_worker_processes(run, tmp_path):
    metadata = pd.read_parquet(run.root / "metadata.parquet")
    chosen = [run.ids[4], run.ids[1], run.ids[2]]
    subset = tmp_path / "subset.parquet"
    metadata.set_index("patch_id").loc[chosen].reset_index().to_parquet(subset)
    out = tmp_path / "subset.csv"
    # In a DataLoader worker process, as users run it on many patches.
    predict(
        predict_config(f"ckpt={run.ckpt}", f"input={run.root}", f"metadata={subset}", f"out={out}", "num_workers=1")
    )
    table = pd.read_csv(out)
    assert list(table["id"]) == chosen
    classes = splml.load_model(run.ckpt).data_spec.class_names
    np.testing.assert_allclose(table[[f"prob/{c}" for c in classes]].to_numpy(), run.probs[[4, 1, 2]], atol=1e-5)
    with pytest.raises(ValueError, match="metadata= and split= select reBEN patches"):
        predict(predict_config(f"ckpt={run.ckpt}", f"input={tmp_path}", f"metadata={subset}", f"out={out}"))


def test_an_rgb_model_predicts_jpeg_png_and_tiff_files_as_training_prepares_them(tmp_path):
    """A model trained on RGB JPEGs (AID layout) scores its test images, and the same pixels saved as PNG / TIFF."""
    from PIL import Image

    from .image_support import write_aid_tree

    root = tmp_path / "aid"
    write_aid_tree(root, n_train=10, n_test=4, size=24)
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=aid", f"dataset.root={root}", "backbone=test_resnet", "trainer.max_epochs=1",
            "dataset.datamodule.image_size=32", "dataset.datamodule.num_workers=0", "dataset.datamodule.batch_size=4",
            "dataset.datamodule.pin_memory=false", "++trainer.enable_progress_bar=false",
            "++trainer.enable_model_summary=false", "~callbacks.progress_bar", f"paths.cache_dir={tmp_path / 'cache'}",
        ])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    module = splml.load_model(ckpt)
    spec = module.data_spec
    assert (spec.input_format, spec.image_size, len(spec.class_names)) == ("rgb", 32, 17)
    datamodule = build_datamodule(cfg)
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    with torch.no_grad():
        expected = module(torch.stack([test[i]["image"] for i in range(len(test))]))["logits"].sigmoid().numpy()
    by_stem = dict(zip(test.ids, expected, strict=True))
    folder = tmp_path / "mixed"
    jpegs = sorted((root / "images_test").rglob("*.jpg"))
    for k, jpeg in enumerate(jpegs):
        target = folder / jpeg.relative_to(root / "images_test")
        target.parent.mkdir(parents=True, exist_ok=True)
        if k == 0:
            shutil.copy(jpeg, target)  # the JPEG itself; the others as lossless copies of its decoded pixels
        else:
            Image.open(jpeg).convert("RGB").save(target.with_suffix(".png" if k % 2 else ".tif"))
    out = tmp_path / "rgb.csv"
    predict(predict_config(f"ckpt={ckpt}", f"input={folder}", f"out={out}", "batch_size=3"))
    table = pd.read_csv(out)
    assert sorted(Path(i).suffix for i in table["id"]) == [".jpg", ".png", ".png", ".tif"]
    want = np.stack([by_stem[Path(i).stem] for i in table["id"]])
    np.testing.assert_allclose(table[[f"prob/{c}" for c in spec.class_names]].to_numpy(), want, atol=1e-5)


def test_thresholds_one_for_all_per_class_from_a_file_or_chosen_on_validation(run, tmp_path):
    folder = patch_folder(run, tmp_path / "patches")
    classes = splml.load_model(run.ckpt).data_spec.class_names
    common = [f"ckpt={run.ckpt}", f"input={folder}", "on_error=skip"]
    predict(predict_config(*common, f"out={tmp_path / 'low.csv'}", "threshold=0.3"))
    low = pd.read_csv(tmp_path / "low.csv")
    assert list(low["labels"].fillna("")) == [";".join(classes[c] for c in np.flatnonzero(p >= 0.3)) for p in run.probs]

    predict(predict_config(*common, f"out={tmp_path / 'val.csv'}", "thresholds=validation"))
    chosen = json.loads((tmp_path / "val_thresholds.json").read_text())
    thresholds = np.array([chosen["thresholds"][c] for c in classes])
    assert chosen["chosen_on"].startswith("validation split") and not np.allclose(thresholds, 0.5)
    table = pd.read_csv(tmp_path / "val.csv")
    expected = [";".join(classes[c] for c in np.flatnonzero(p >= thresholds)) for p in run.probs]
    assert list(table["labels"].fillna("")) == expected
    # The file just written is a thresholds file too.
    predict(predict_config(*common, f"out={tmp_path / 'again.csv'}", f"thresholds={tmp_path / 'val_thresholds.json'}"))
    assert list(pd.read_csv(tmp_path / "again.csv")["labels"].fillna("")) == expected

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Urban fabric": 0.5, "Volcano": 0.2}))
    with pytest.raises(
        DataFormatError, match=r"bad.json: the thresholds must name every class .* unknown \['Volcano'\]"
    ):
        predict(predict_config(*common, f"out={tmp_path / 'x.csv'}", f"thresholds={bad}"))


def test_an_image_where_a_geotiff_is_expected_is_named(run, tmp_path):
    picture = write_image(tmp_path / "holiday.jpg")
    with pytest.raises(DataFormatError, match=r"holiday.jpg: this model reads 12 reBEN bands .* not a .jpg"):
        predict(predict_config(f"ckpt={run.ckpt}", f"input={picture}", f"out={tmp_path / 'p.csv'}"))


def test_values_outside_the_trained_range_are_named(run, tmp_path):
    """Reflectance in [0, 1] instead of x 10000 would pass unnoticed without the range: it is refused."""
    bands = run.raw[0].copy()
    bands[run.bands.index("VV")] = 1e9
    tif = write_geotiff(tmp_path / "loud.tif", bands, run.bands)
    with pytest.raises(DataFormatError, match=r"loud.tif: band VV \(channel 0\) has values in .* outside the range"):
        predict(predict_config(f"ckpt={run.ckpt}", f"input={tif}", f"out={tmp_path / 'p.csv'}"))


# -- exporting -----------------------------------------------------------------------------------------
def export_config(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("export", overrides=list(overrides))


@pytest.mark.parametrize("fmt", ["torchscript", "exported_program"])
def test_torchscript_and_exported_program_give_pytorchs_probabilities_on_real_inputs(run, tmp_path, fmt):
    out = export(export_config(f"ckpt={run.ckpt}", f"format={fmt}", f"out={tmp_path / 'model'}"))
    np.testing.assert_allclose(run_export(out, fmt, run.inputs), run.probs, atol=1e-4)
    assert run_export(out, fmt, run.inputs[:1]).shape == (1, 19)  # any batch size


# -- the README's commands -----------------------------------------------------------------------------
def readme_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the README's "Use a trained model" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


@pytest.fixture(scope="module")
def readme(run, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The README's shell block, run as written (the commands as `python -m splml.<command>`) in a folder
    holding the files it names; ``/data/reBEN`` is the run's dataset and $CKPT its checkpoint."""
    (block,) = readme_blocks("bash")
    work = tmp_path_factory.mktemp("readme")
    patch_folder(run, work / "my_patches")
    for bad in ("zz_broken.tif", "zz_three_bands.tif"):
        (work / "my_patches" / bad).unlink()
    (work / "my_list.txt").write_text("my_patches/patch_2.tif\nmy_patches/patch_0.tif\n")
    script = re.sub(r"^CKPT=.*$", f"CKPT={run.ckpt}", block, flags=re.MULTILINE).replace("/data/reBEN", str(run.root))
    commands = "".join(
        f"{name}() {{ {sys.executable} -m splml.{module} \"$@\"; }}\n"
        for name, module in (("splml-predict", "predict"), ("splml-export", "export"))
    )  # fmt: skip
    # This checkout's package, whatever the working directory.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(splml.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands + script + "\n"], cwd=work, env=env, capture_output=True,
        text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(work=work, script=script)


@pytest.mark.slow
def test_the_readme_commands_predict_and_export(run, readme):
    work = readme.work
    classes = splml.load_model(run.ckpt).data_spec.class_names
    table = pd.read_csv(work / "predictions.csv")
    assert list(table["id"]) == [f"patch_{i}.tif" for i in range(N_PATCHES)]
    np.testing.assert_allclose(table[[f"prob/{c}" for c in classes]].to_numpy(), run.probs, atol=1e-5)
    assert len(pd.read_parquet(work / "test_predictions.parquet")) == len(run.datamodule.datasets["test"])
    assert list(pd.read_csv(work / "listed.csv")["id"]) == ["my_patches/patch_2.tif", "my_patches/patch_0.tif"]
    assert set(json.loads((work / "listed_thresholds.json").read_text())["thresholds"]) == set(classes)


@pytest.mark.slow
def test_the_readme_onnx_file_gives_pytorchs_probabilities_in_onnxruntime(run, readme):
    onnx_file = readme.work / "model.onnx"
    np.testing.assert_allclose(run_export(onnx_file, "onnx", run.inputs), run.probs, atol=1e-4)
    sidecar = json.loads((readme.work / "model.onnx.json").read_text())
    assert sidecar["format"] == "onnx" and sidecar["input"]["shape"] == ["batch", 12, 120, 120]
    assert sidecar["output"] == {
        "name": "probabilities",
        "shape": ["batch", 19],
        "meaning": sidecar["output"]["meaning"],
    }
    assert sidecar["class_names"] == list(classes_of(run)) and sidecar["bands"] == run.bands
    assert sidecar["mean"][0] == pytest.approx(-12.644) and sidecar["image_size"] == 120
    assert sidecar["checkpoint"]["sha256"] == file_sha256(run.ckpt) and sidecar["splml_version"] == splml.__version__
    assert sidecar["verification"]["max_abs_difference_to_pytorch"] < 1e-4


def classes_of(run) -> tuple[str, ...]:
    return splml.load_model(run.ckpt).data_spec.class_names


@pytest.mark.slow
def test_the_readme_python_gives_the_probabilities(run, readme, monkeypatch, capsys):
    (block,) = readme_blocks("python")
    code = re.sub(r'"logs/train/runs/[^"]+best.ckpt"', repr(str(run.ckpt)), block)
    monkeypatch.chdir(readme.work)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    shown = ast.literal_eval(printed)  # the dict the example prints
    np.testing.assert_allclose(list(shown.values()), run.probs[0], atol=1e-3)


def test_a_retrieval_model_predicts_and_exports_its_embeddings(tmp_path):
    cfg = compose_train(
        tmp_path / "run", "task=retrieval", "loss=supcon", "labels=full", "backbone=test_resnet", "trainer.max_epochs=1",
        "dataset.datamodule.max_samples={train: 32, validation: 16, test: 16}", cache_dir=tmp_path / "cache",
    )  # fmt: skip
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    module = splml.load_model(ckpt)
    assert isinstance(module, RetrievalModule) and module.data_spec.task == "retrieval"
    root = next((tmp_path / "cache" / "synthetic").glob("reben-synthetic-*"))
    out = tmp_path / "embeddings.csv"
    predict(predict_config(f"ckpt={ckpt}", f"input={root}", "split=test", f"out={out}"))
    table = pd.read_csv(out)
    columns = [c for c in table.columns if c.startswith("embedding/")]
    assert len(table) == 16 and len(columns) == 96 and "labels" not in table  # test_resnet's width
    np.testing.assert_allclose(np.linalg.norm(table[columns].to_numpy(), axis=1), 1.0, atol=1e-5)
    exported = export(export_config(f"ckpt={ckpt}", "format=torchscript", f"out={tmp_path / 'net.pt'}"))
    images = torch.randn(2, 12, 120, 120)
    with torch.no_grad():
        np.testing.assert_allclose(run_export(exported, "torchscript", images), module(images)["embedding"], atol=1e-5)
    assert json.loads((tmp_path / "net.pt.json").read_text())["output"]["name"] == "embedding"
