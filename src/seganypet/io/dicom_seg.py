"""DICOM SEG export with highdicom: a mask a PACS accepts, referencing the source PET series.

Frames follow the source instances one to one (empty frames kept), so a
reader maps each frame back to its PET slice through the referenced SOP
Instance UID rather than through frame order.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from seganypet import __version__
from seganypet.errors import SegAnyPetError
from seganypet.io.dicom import dcmread
from seganypet.io.image import PetImage
from seganypet.io.write import write_atomic

_SCT = "SCT"
ANATOMY = hd.sr.CodedConcept("91723000", _SCT, "Anatomical Structure")
ALTERED = hd.sr.CodedConcept("49755003", _SCT, "Morphologically Altered Structure")
# SNOMED CT codes for the structures seganypet knows by name
STRUCTURE_CODES: dict[str, tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]] = {
    "brain": (ANATOMY, hd.sr.CodedConcept("12738006", _SCT, "Brain")),
    "myocardium": (ANATOMY, hd.sr.CodedConcept("74281007", _SCT, "Myocardium")),
    "liver": (ANATOMY, hd.sr.CodedConcept("10200004", _SCT, "Liver")),
    "spleen": (ANATOMY, hd.sr.CodedConcept("78961009", _SCT, "Spleen")),
    "kidney_left": (ANATOMY, hd.sr.CodedConcept("18639004", _SCT, "Left kidney")),
    "kidney_right": (ANATOMY, hd.sr.CodedConcept("9846003", _SCT, "Right kidney")),
    "bladder": (ANATOMY, hd.sr.CodedConcept("89837001", _SCT, "Urinary bladder")),
    "lung_left": (ANATOMY, hd.sr.CodedConcept("44029006", _SCT, "Left lung")),
    "lung_right": (ANATOMY, hd.sr.CodedConcept("3341006", _SCT, "Right lung")),
    "aorta": (ANATOMY, hd.sr.CodedConcept("15825003", _SCT, "Aorta")),
    "spine": (ANATOMY, hd.sr.CodedConcept("421060004", _SCT, "Spine")),
    "lesion": (ALTERED, hd.sr.CodedConcept("52988006", _SCT, "Lesion")),
}
GENERIC = (ALTERED, hd.sr.CodedConcept("52988006", _SCT, "Lesion"))
# Type 2 attributes of the Patient and General Study modules, which highdicom copies from the source into the SEG:
# they must be present there but may be empty, and anonymised or research PET often leaves some out
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")


def write_dicom_seg(image: PetImage, labels: np.ndarray, names: Mapping[int, str], path: str | Path, method: str = "seganypet") -> Path:
    """Write label map ``labels`` (ints on the image grid; 0 = background) as a BINARY DICOM SEG.

    names: label value -> structure name (a key of STRUCTURE_CODES gets its SNOMED code;
    any other name is coded as a lesion with that label).
    """
    files = image.meta.source_files
    if not files:
        raise SegAnyPetError("DICOM SEG needs a DICOM source series; this image came from a volume file", image.source)
    sources = [dcmread(f, stop_before_pixels=True) for f in files]  # SEG copies headers, never pixels
    for source in sources:
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in source:
                setattr(source, keyword, None)  # present and empty, as the standard allows
    values = [int(v) for v in np.unique(labels) if v]
    if not values:
        raise SegAnyPetError("nothing to export: the mask is empty", image.source)
    algorithm = hd.AlgorithmIdentificationSequence(name="seganypet", version=__version__, family=codes.cid7162.ArtificialIntelligence,
                                                   parameters={"method": method})
    descriptions = []
    for number, value in enumerate(values, start=1):
        name = names.get(value, f"structure_{value}")
        category, kind = STRUCTURE_CODES.get(name, GENERIC)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=f"{name} {value}"))
    # (i, j, k) -> frames (k, rows=j, cols=i), one per source instance, in source order; one channel per segment
    frames = np.stack([labels.transpose(2, 1, 0) == v for v in values], axis=-1).astype(np.uint8)
    try:
        with warnings.catch_warnings():  # a source's one-part PatientName is copied as it is: nothing to warn about
            warnings.filterwarnings("ignore", "The string .* is unlikely to represent the intended person name")
            seg = _segmentation(sources, frames, descriptions, method)
    except (AttributeError, TypeError, ValueError) as exc:  # highdicom's refusal of a source header it cannot copy
        raise SegAnyPetError(f"cannot write DICOM SEG from this series: {exc}", image.source) from exc
    return write_atomic(path, lambda tmp: seg.save_as(tmp))


def _segmentation(sources: list[pydicom.Dataset], frames: np.ndarray, descriptions: list, method: str) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="seganypet",
        manufacturer_model_name="seganypet",
        software_versions=__version__,
        device_serial_number="0",
        omit_empty_frames=False,
        series_description=f"SEG {method}"[:64],
    )


def read_dicom_seg(path: str | Path, image: PetImage) -> tuple[np.ndarray, dict[int, str]]:
    """A DICOM SEG back on ``image``'s grid: (label map with segment numbers, number -> label).

    Frames are placed by their referenced source SOP Instance UID, never by frame order.
    """
    seg = hd.seg.Segmentation.from_dataset(dcmread(path), copy=False)  # through dcmread: a SEG without a preamble too
    slice_of = {uid: k for k, uid in enumerate(image.meta.sop_instance_uids)}
    foreign = {uid for _, _, uid in seg.get_source_image_uids()} - set(slice_of)
    if foreign:
        raise SegAnyPetError(f"the SEG refers to {len(foreign)} image(s) that are not slices of this scan: it was drawn "
                             "on another series (give that series' DICOM as the scan)", path)
    labels = np.zeros(image.shape, np.uint16)
    names = {}
    for number in seg.segment_numbers:
        names[number] = seg.get_segment_description(number).segment_label
        uids = [uid for _, _, uid in seg.get_source_image_uids()]
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number])
        for uid, frame in zip(uids, frames):
            labels[:, :, slice_of[uid]][frame[..., 0].T > 0] = number
    return labels, names
