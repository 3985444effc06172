"""``python -m splml.annotate dataset=<name> out=<csv>``: serve the annotation page.

Composed by Hydra from ``conf/annotate.yaml`` and the same dataset configs as ``splml.train``,
so every dataset option (``dataset.root``, ``max_samples``, ...) means the same here; the
training command printed at the start, on the finished page and by ``--help`` repeats them.
"""

from __future__ import annotations

import errno
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from splml.config import answer_help, config_dir, register_resolvers
from splml.io.label_files import AnnotationFileBusy, AnnotationLog, LabelFileError, ShardInfo

if TYPE_CHECKING:
    from splml.annotate.items import AnnotationItems
    from splml.annotate.server import AnnotationServer

log = logging.getLogger("splml.annotate")
register_resolvers()

#: Override keys that choose the images (and so must be repeated when training on the file).
DATASET_KEYS = ("dataset", "paths")


def dataset_overrides(overrides: Sequence[str]) -> list[str]:
    """The command-line overrides that set the dataset or its options (``dataset=``, ``dataset.*``, ``paths.*``)."""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0].split("@", 1)[0] in DATASET_KEYS:
            kept.append(override)
    return kept


def next_steps(overrides: Sequence[str], out: str, shard: ShardInfo | None = None) -> list[str]:
    """The commands that take the annotation file to training: the merge first for a shard."""
    dataset = dataset_overrides(overrides)
    if not any(o.split("=", 1)[0].lstrip("+") == "dataset" for o in dataset):
        dataset.insert(0, "dataset=synthetic")  # the default of conf/annotate.yaml, not of conf/train.yaml
    labels = out
    steps = []
    if shard is not None:
        path = Path(out)
        labels = str(path.with_name(f"{path.stem}_merged{path.suffix or '.csv'}"))
        steps.append(
            f"python -m splml.annotate.merge {shlex.quote(out)} <the other {shard.count - 1} shard file(s)> "
            f"--out {shlex.quote(labels)}"
        )
    train = ["python", "-m", "splml.train", *dataset, "labels=manual", f"labels.file={labels}"]
    steps.append(" ".join(shlex.quote(part) for part in train))
    return steps


def _help_commands(*, _root_: Any) -> str:
    """For ``--help``: the training command of the options given with it (Hydra's help template)."""
    overrides = list(OmegaConf.select(_root_, "hydra.overrides.task", default=[]) or [])
    out = OmegaConf.select(_root_, "out", default=None, throw_on_missing=False) or "<out.csv>"
    shard = OmegaConf.select(_root_, "shard", default=None)
    fake = ShardInfo(1, int(str(shard).split("/")[-1]), 0, 0, 0, 0, "") if shard else None
    steps = next_steps(overrides, str(out), fake)
    return "\n".join("  " + step for step in steps).replace("$", "$$")  # the template is a string.Template


if not OmegaConf.has_resolver("splml_annotate_next_steps"):
    OmegaConf.register_new_resolver("splml_annotate_next_steps", _help_commands, use_cache=False)


def build_items(cfg: DictConfig) -> AnnotationItems:
    """The images to annotate for the composed config's dataset."""
    # torch and the datasets load here, after Hydra has parsed the command line (a fast --help).
    from hydra.utils import instantiate

    from splml.annotate.items import items_from_datamodule
    from splml.data.labels import FullLabels

    # The label source plays no part in which images there are; full labels need no file.
    datamodule = instantiate(cfg.dataset.datamodule, labels=FullLabels(), _convert_="all")
    return items_from_datamodule(datamodule, stretch=tuple(cfg.stretch))


def open_server(cfg: DictConfig, overrides: Sequence[str] = ()) -> AnnotationServer:
    """Everything but serving: the items (this shard's), the locked annotation file, the session, the bound socket."""
    from splml.annotate.server import AnnotationServer, is_loopback
    from splml.annotate.session import AnnotationSession
    from splml.annotate.shards import check_shard_file, shard_info

    out = cfg.out  # a missing out= fails before the dataset is read
    items = build_items(cfg)
    shard = None
    if cfg.shard:
        shard, positions = shard_info(items.ids, items.class_names, cfg.shard, cfg.overlap, cfg.shard_seed)
        items = items.subset(positions, f"{items.description}, shard {shard.label} ({shard.images} images)")
    check_shard_file(out, shard)
    annotations = AnnotationLog(out, items.ids, items.class_names)
    try:
        if annotations.repaired:
            log.warning(
                "%s ended in a half-written line (a crash while writing it; it was never confirmed to the page), "
                "removed: %r",
                annotations.path, annotations.repaired.decode("utf-8", "replace"),
            )  # fmt: skip
        if annotations.upgraded:
            log.warning("%s was given the columns kind and note (its rows are unchanged)", annotations.path)
        session = AnnotationSession(
            items, annotations, cfg.annotator, order_seed=cfg.order_seed, shard=shard,
            next_steps=next_steps(overrides, str(out), shard), history_size=cfg.history_size,
            min_view_ms=cfg.min_view_ms,
        )  # fmt: skip
        try:
            server = AnnotationServer(
                session, cfg.host, cfg.port, cfg.display_size, token=None if cfg.token is None else str(cfg.token),
                request_timeout=cfg.request_timeout, max_connections=cfg.max_connections,
            )  # fmt: skip
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"port {cfg.port} is in use; choose port=<another> or port=0") from exc
            raise
    except BaseException:
        annotations.close()
        raise
    if not is_loopback(cfg.host):
        if server.token is None:
            log.warning(
                "serving on %s without an access token (token=null): anyone who can reach this machine on port %d "
                "can see the images and write answers",
                cfg.host, server.port,
            )  # fmt: skip
        else:
            log.warning(
                "serving on %s: whoever has the address with its token can see the images and write answers; the "
                "token travels unencrypted (plain HTTP), so use a trusted network",
                cfg.host,
            )  # fmt: skip
    return server


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="annotate")
def main(cfg: DictConfig) -> None:
    try:
        from hydra.core.hydra_config import HydraConfig

        server = open_server(cfg, list(HydraConfig.get().overrides.task))
    except (AnnotationFileBusy, LabelFileError, OSError, ValueError) as exc:
        # Expected situations with a message that says what to do: no traceback.
        print(f"splml.annotate: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from exc
    session = server.session
    state = session.state()
    print(
        f"splml.annotate: {state['total']} images of the {session.items.description}; "
        f"{state['labelled']} labelled, {state['skipped']} skipped, {state['none']} none of these, "
        f"{state['flagged']} flagged so far; answers go to {session.log.path}",
        flush=True,
    )
    print("When every image has a class:\n" + "\n".join(f"  {step}" for step in session.next_steps), flush=True)
    print(f"Open {server.url} in a browser (Ctrl-C stops; every confirmed answer is already on disk)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        session.log.close()


def _help_epilogue(cfg: DictConfig, overrides: list[str]) -> str:
    """``--help``'s last part: the commands that take the file made with these options to training."""
    shard = OmegaConf.select(cfg, "shard", default=None)
    fake = ShardInfo(1, int(str(shard).split("/")[-1]), 0, 0, 0, 0, "") if shard else None
    out = OmegaConf.select(cfg, "out", default=None, throw_on_missing=False) or "<out.csv>"
    steps = next_steps(overrides, str(out), fake)
    return "With these options, the finished file goes to training with:\n" + "\n".join("  " + s for s in steps)


def cli() -> None:
    """``splml-annotate``: the command line (a quick ``--help``, then Hydra)."""
    summary = "label the training images by hand on a local web page (the file is what labels=manual reads)"
    if not answer_help("annotate", "splml-annotate", summary, epilogue=_help_epilogue):
        main()


if __name__ == "__main__":
    cli()
