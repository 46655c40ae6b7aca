"""Synthetic whole-body FDG PET phantoms with ground truth, and their nnU-Net/DICOM writers."""

from seganypet.phantom.generate import LABELS, LESION_LABEL, PhantomCase, PhantomConfig, generate_case

__all__ = ["LABELS", "LESION_LABEL", "PhantomCase", "PhantomConfig", "generate_case"]
