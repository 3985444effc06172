"""Measured tables that scripts write into hand-written Markdown (benchmark READMEs)."""

from __future__ import annotations

from pathlib import Path


def block_markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def write_generated_block(path: Path, name: str, body: str, heading: str | None = None) -> None:
    """Replace the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in ``path``.

    The prose around the block is kept. A file without the markers gets the block appended
    (under ``heading`` if given); a file with one marker but not the other is an error, because
    guessing where the block ends could delete prose.
    """
    begin, end = block_markers(name)
    text = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    has_begin, has_end = begin in text, end in text
    if has_begin != has_end:
        raise ValueError(f"{path}: has {begin if has_begin else end} without its pair; fix the file by hand")
    if has_begin:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        prefix = text.rstrip() + "\n\n" if text.strip() else ""
        text = prefix + (f"{heading}\n\n" if heading else "") + block + "\n"
    path.write_text(text)
