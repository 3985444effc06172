"""Label files: the annotation CSV (:mod:`.annotations`) and the single-positive label files (:mod:`.single_positive`)."""

from splml.io.label_files.annotations import (
    ANNOTATION_COLUMNS,
    AnnotationFileBusy,
    AnnotationLog,
    Annotations,
    Answer,
    LabelFileError,
    read_annotation_file,
    read_annotations,
)
from splml.io.label_files.single_positive import OBSERVED_LABELS_STEM, load_single_positive_file, save_observed

__all__ = [
    "ANNOTATION_COLUMNS",
    "OBSERVED_LABELS_STEM",
    "AnnotationFileBusy",
    "AnnotationLog",
    "Annotations",
    "Answer",
    "LabelFileError",
    "load_single_positive_file",
    "read_annotation_file",
    "read_annotations",
    "save_observed",
]
