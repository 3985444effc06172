"""Export a trained network: ``splml-export ckpt=<run>/checkpoints/best.ckpt format=onnx|torchscript|exported_program``.

The network is rebuilt from the checkpoint alone (:func:`splml.load_model`) and exported as a
function of one input, ``image`` (``batch x C x S x S`` float32, prepared as its data spec says),
to one output: ``probabilities`` (``batch x L``, the sigmoid of the logits, in class order) for a
classifier, ``embedding`` (``batch x D``, L2-normalised) for a retrieval model. The batch axis
stays free. Beside the file, ``<out>.json`` (the sidecar) holds what a user of the file needs and
cannot read from it: the classes, the bands and their normalisation, the image size and
resizing, the splml and torch versions, and the checkpoint's path, epoch and SHA-256. With
``verify=true`` the exported file is run on a batch of another size and compared with PyTorch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from splml.config import answer_help, config_dir, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()

#: Format -> suffix of the exported file.
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}


PREPARATION = (
    "channels in the order of bands; (value * value_scale - mean) / std per channel; the whole image resized to "
    "image_size x image_size (resize)"
)
OUTPUT_MEANING = {
    "classification": "sigmoid probability of each class, in the order of class_names",
    "retrieval": "L2-normalised embedding (rank by cosine similarity)",
}


def exported_network(module: Any) -> Any:
    """The module's network as a plain ``torch.nn.Module``: image -> probabilities (or embedding), eval mode."""
    from torch import nn

    class ExportedNetwork(nn.Module):
        def __init__(self, model: nn.Module, task: str) -> None:
            super().__init__()
            self.model, self.task = model, task

        def forward(self, image: Any) -> Any:
            out = self.model(image)
            return out["logits"].sigmoid() if self.task == "classification" else out["embedding"]

    return ExportedNetwork(module.model, module.data_spec.task).eval()


def output_name(task: str) -> str:
    return "probabilities" if task == "classification" else "embedding"


def write_export(network: Any, example: Any, fmt: str, out: Path, *, opset: int, task: str) -> None:
    """Write ``network`` traced on ``example`` (batch axis dynamic) as ``fmt`` to ``out``."""
    import torch

    batch = torch.export.Dim("batch")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401 - the exporter needs it; say so before tracing
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"format=onnx needs the onnx and onnxscript packages: pip install 'splml[export]' ({exc})"
            ) from exc
        torch.onnx.export(
            network, (example,), str(out), dynamo=True, external_data=False, verbose=False, opset_version=opset,
            input_names=["image"], output_names=[output_name(task)], dynamic_shapes={"image": {0: batch}},
        )  # fmt: skip
    elif fmt == "torchscript":
        torch.jit.trace(network, example).save(str(out))
    elif fmt == "exported_program":
        torch.export.save(torch.export.export(network, (example,), dynamic_shapes={"image": {0: batch}}), str(out))
    else:
        raise ValueError(f"format={fmt!r}: choose one of {sorted(FORMATS)}")


def run_export(path: Path, fmt: str, images: Any) -> Any:
    """Run an exported file on ``images`` (a torch tensor) the way its users would; returns a numpy array."""
    import torch

    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": images.numpy()})[0]
    if fmt == "torchscript":
        return torch.jit.load(str(path)).eval()(images).detach().numpy()
    return torch.export.load(str(path)).module()(images).detach().numpy()


def export(cfg: DictConfig) -> Path:
    """Export the checkpoint's network and write its sidecar; returns the exported file."""
    import torch

    from splml.inference import load_model
    from splml.io.checkpoint import file_sha256, load_checkpoint
    from splml.version import __version__

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: choose one of {sorted(FORMATS)}")
    ckpt = Path(str(cfg.ckpt)).expanduser().resolve()
    module = load_model(ckpt)
    spec = module.data_spec
    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else Path(ckpt.stem + FORMATS[fmt])
    network = exported_network(module)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, spec.num_channels, spec.image_size, spec.image_size, generator=generator)
    write_export(network, example, fmt, out, opset=int(cfg.opset), task=spec.task)
    classification = spec.task == "classification"
    sidecar: dict[str, Any] = {
        "format": fmt,
        "file": out.name,
        "input": {
            "name": "image",
            "shape": ["batch", spec.num_channels, spec.image_size, spec.image_size],
            "dtype": "float32",
            "layout": "NCHW",
            "preparation": PREPARATION,
        },
        "output": {
            "name": output_name(spec.task),
            "shape": ["batch", spec.num_classes if classification else "embedding size"],
            "meaning": OUTPUT_MEANING[spec.task],
        },
        **spec.to_dict(),
        "opset": int(cfg.opset) if fmt == "onnx" else None,
        "splml_version": __version__,
        "torch_version": torch.__version__,
        "checkpoint": {"path": str(ckpt), "sha256": file_sha256(ckpt), "epoch": load_checkpoint(ckpt).get("epoch")},
    }
    if cfg.verify:
        images = torch.randn(3, *example.shape[1:], generator=generator)
        with torch.inference_mode():
            expected = network(images).numpy()
        difference = float(abs(run_export(out, fmt, images) - expected).max())
        sidecar["verification"] = {"batch": 3, "max_abs_difference_to_pytorch": difference}
        log.info("the exported %s gives PyTorch's outputs to %.2g", fmt, difference)
    sidecar_path = out.with_name(out.name + ".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("%s (%s, %d classes, %d bands, %d px) -> %s (+ %s)", fmt, spec.backbone, spec.num_classes,
             spec.num_channels, spec.image_size, out, sidecar_path.name)  # fmt: skip
    return out


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


def cli() -> None:
    """``splml-export``: the command line (a quick ``--help``, then Hydra)."""
    if not answer_help("export", "splml-export", "export a checkpoint's network to ONNX, TorchScript or torch.export"):
        main()


if __name__ == "__main__":
    cli()
