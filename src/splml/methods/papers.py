"""The papers the methods come from, cited once here and referred to by each method's registration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    authors: str
    title: str
    venue: str

    @property
    def short(self) -> str:
        """``Cole et al., CVPR 2021``: for tables."""
        return f"{self.authors}, {self.venue}"

    def __str__(self) -> str:
        return f"{self.authors}, *{self.title}*, {self.venue}"


COLE_2021 = Paper("Cole et al.", "Multi-Label Learning from Single Positive Labels", "CVPR 2021")
VERELST_2023 = Paper(
    "Verelst et al.",
    "Spatial Consistency Loss for Training Multi-Label Classifiers from Single-Label Annotations",
    "WACV 2023",
)
KIM_2022 = Paper("Kim et al.", "Large Loss Matters in Weakly Supervised Multi-Label Classification", "CVPR 2022")
ZHOU_2022 = Paper(
    "Zhou et al.", "Acknowledging the Unknown for Multi-label Learning with Single Positive Labels", "ECCV 2022"
)
RIDNIK_2021 = Paper("Ridnik et al.", "Asymmetric Loss For Multi-Label Classification", "ICCV 2021")
LIN_2017 = Paper("Lin et al.", "Focal Loss for Dense Object Detection", "ICCV 2017")
ZHANG_2021 = Paper(
    "Zhang et al.", "Simple and Robust Loss Design for Multi-Label Learning with Missing Labels", "arXiv 2112.07368"
)
CHEN_2024 = Paper(
    "Chen et al.", "Boosting Single Positive Multi-label Classification with Generalized Robust Loss", "IJCAI 2024"
)
ADAGC_2025 = Paper(
    "AdaGC", "Adaptive gradient calibration for single-positive multi-label learning", "arXiv 2510.08269"
)
KHOSLA_2020 = Paper("Khosla et al.", "Supervised Contrastive Learning", "NeurIPS 2020")
ZHANG_WU_2024 = Paper("Zhang and Wu", "Multi-Label Supervised Contrastive Learning", "AAAI 2024")
MACL = Paper("MACL", "Multi-label-aware contrastive learning for remote-sensing image retrieval", "code unreleased")
