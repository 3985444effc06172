"""``python -m splml.annotate dataset=<name> out=<csv>``: serve the annotation page.

Composed by Hydra from ``conf/annotate.yaml`` and the same dataset configs as ``splml.train``,
so every dataset option (``dataset.root``, ``max_samples``, ...) means the same here.
"""

from __future__ import annotations

import errno
import logging
import sys
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from splml.config import answer_help, config_dir, register_resolvers
from splml.io.label_files import AnnotationFileBusy, AnnotationLog, LabelFileError

if TYPE_CHECKING:
    from splml.annotate.items import AnnotationItems
    from splml.annotate.server import AnnotationServer

log = logging.getLogger("splml.annotate")
register_resolvers()


def build_items(cfg: DictConfig) -> AnnotationItems:
    """The images to annotate for the composed config's dataset."""
    # torch and the datasets load here, after Hydra has parsed the command line (a fast --help).
    from hydra.utils import instantiate

    from splml.annotate.items import items_from_datamodule
    from splml.data.labels import FullLabels

    # The label source plays no part in which images there are; full labels need no file.
    datamodule = instantiate(cfg.dataset.datamodule, labels=FullLabels(), _convert_="all")
    return items_from_datamodule(datamodule, stretch=tuple(cfg.stretch))


def open_server(cfg: DictConfig) -> AnnotationServer:
    """Everything but serving: the items, the locked annotation file, the session, the bound socket."""
    from splml.annotate.server import AnnotationServer, is_loopback
    from splml.annotate.session import AnnotationSession

    out = cfg.out  # a missing out= fails before the dataset is read
    items = build_items(cfg)
    annotations = AnnotationLog(out, items.ids, items.class_names)
    try:
        if annotations.repaired:
            log.warning(
                "%s ended in a half-written line (a crash while writing it; it was never confirmed to the page), "
                "removed: %r",
                annotations.path, annotations.repaired.decode("utf-8", "replace"),
            )  # fmt: skip
        session = AnnotationSession(items, annotations, cfg.annotator, order_seed=cfg.order_seed)
        try:
            server = AnnotationServer(session, cfg.host, cfg.port, cfg.display_size)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"port {cfg.port} is in use; choose port=<another> or port=0") from exc
            raise
    except BaseException:
        annotations.close()
        raise
    if not is_loopback(cfg.host):
        log.warning(
            "serving on %s: anyone who can reach this machine on port %d can see the images and write answers "
            "(there is no authentication); use host=127.0.0.1 unless the network is trusted",
            cfg.host, server.port,
        )  # fmt: skip
    return server


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="annotate")
def main(cfg: DictConfig) -> None:
    try:
        server = open_server(cfg)
    except (AnnotationFileBusy, LabelFileError, OSError) as exc:
        # Expected situations with a message that says what to do: no traceback.
        print(f"splml.annotate: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from exc
    session = server.session
    state = session.state()
    print(
        f"splml.annotate: {state['total']} images of the {session.items.description}; "
        f"{state['labelled']} labelled, {state['skipped']} skipped so far; answers go to {session.log.path}",
        flush=True,
    )
    print(f"Open {server.url} in a browser (Ctrl-C stops; every confirmed answer is already on disk)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        session.log.close()


def cli() -> None:
    """``splml-annotate``: the command line (a quick ``--help``, then Hydra)."""
    if not answer_help("annotate", "splml-annotate", "label the training images by hand on a local web page"):
        main()


if __name__ == "__main__":
    cli()
