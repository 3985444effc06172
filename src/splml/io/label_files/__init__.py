"""Label files: the annotation CSV (rows and reader in :mod:`.annotations`, writer in
:mod:`.annotation_log`) and the single-positive label files (:mod:`.single_positive`)."""

from splml.io.label_files.annotation_log import AnnotationFileBusy, AnnotationLog
from splml.io.label_files.annotations import (
    ANNOTATION_COLUMNS,
    CLASS_KINDS,
    DECISION_KINDS,
    LEGACY_COLUMNS,
    META_KINDS,
    Annotations,
    Answer,
    LabelFileError,
    RowKind,
    ShardInfo,
    dataset_fingerprint,
    note_fields,
    read_annotation_file,
    read_annotations,
    replay,
)
from splml.io.label_files.single_positive import OBSERVED_LABELS_STEM, load_single_positive_file, save_observed

__all__ = [
    "ANNOTATION_COLUMNS",
    "CLASS_KINDS",
    "DECISION_KINDS",
    "LEGACY_COLUMNS",
    "META_KINDS",
    "OBSERVED_LABELS_STEM",
    "AnnotationFileBusy",
    "AnnotationLog",
    "Annotations",
    "Answer",
    "LabelFileError",
    "RowKind",
    "ShardInfo",
    "dataset_fingerprint",
    "load_single_positive_file",
    "note_fields",
    "read_annotation_file",
    "read_annotations",
    "replay",
    "save_observed",
]
