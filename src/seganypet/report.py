"""The outputs of a segmentation, in the source geometry: NIfTI labels, DICOM SEG, JSON/CSV report, picture.

Everything is computed before anything is written, and each file is written
atomically, so a failure leaves no half-written output folder.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from seganypet import __version__
from seganypet.io.image import PetImage
from seganypet.io.write import write_atomic, write_nifti
from seganypet.quant import Quantities, lesion_table, quantify

UNITS = {"suv": "g/mL (SUVbw)", "sul": "g/mL (SUL, Janmahasatian LBM)", "mtv_ml": "mL", "tlg": "g (SUVmean x mL)",
         "suv_max_mm": "mm", "suv_max_voxel": "voxel (i, j, k)"}
CSV_FIELDS = ["structure", "label", "component", "voxels", "mtv_ml", "suv_max", "suv_mean", "suv_peak", "tlg",
              "suv_max_voxel", "suv_max_mm", "sul_max", "sul_mean", "sul_peak"]


def build_report(image: PetImage, labels: np.ndarray, names: Mapping[int, str], method: str, prompts: Mapping | None = None) -> dict:
    """Quantities per structure (label value) and per connected component of each."""
    structures = []
    for value in (int(v) for v in np.unique(labels) if v):
        mask = labels == value
        structures.append({
            "label": value,
            "name": names.get(value, f"structure_{value}"),
            "total": quantify(image, mask).as_dict(),
            "components": [q.as_dict() for q in lesion_table(image, mask)],
        })
    m = image.meta
    return {
        "software": "seganypet",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(image.source) if image.source else None,
        "series_instance_uid": m.series_instance_uid,
        "image_space": image.space,
        "spacing_mm": [float(v) for v in image.spacing],
        "method": method,
        "prompts": dict(prompts or {}),
        "patient": {"weight_kg": m.patient_weight_kg, "height_m": m.patient_height_m, "sex": m.patient_sex},
        "units": UNITS,
        "notes": list(m.notes),
        "structures": structures,
    }


def report_csv(report: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for s in report["structures"]:
        for component, row in [("all", s["total"])] + list(enumerate(s["components"], start=1)):
            flat = {k: (" ".join(f"{x:.6g}" for x in v) if isinstance(v, (list, tuple)) else v) for k, v in row.items()}
            writer.writerow({"structure": s["name"], "label": s["label"], "component": component, **flat})
    return out.getvalue()


def write_outputs(
    image: PetImage,
    labels: np.ndarray,
    names: Mapping[int, str],
    out: str | Path,
    method: str,
    prompts: Mapping | None = None,
    picture: bool = True,
) -> tuple[dict[str, Path], dict]:
    """Write mask.nii.gz, seg.dcm (DICOM input only), report.json, report.csv and overview.png into ``out``.

    Returns the paths written and the report itself, so callers need not read it back.
    """
    out = Path(out)
    report = build_report(image, labels, names, method, prompts)
    written = {"mask": write_nifti(image, out / "mask.nii.gz", labels.astype(np.uint16 if labels.max() > 255 else np.uint8))}
    if image.meta.source_files:
        from seganypet.io.dicom_seg import write_dicom_seg

        written["dicom_seg"] = write_dicom_seg(image, labels, names, out / "seg.dcm", method)
    written["json"] = write_atomic(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    written["csv"] = write_atomic(out / "report.csv", lambda tmp: tmp.write_text(report_csv(report)))
    if picture:
        from seganypet.viz import save_mip_png

        hottest = max(report["structures"], key=lambda s: s["total"]["suv_max"])["total"]["suv_max_voxel"]
        written["picture"] = save_mip_png(image, out / "overview.png", labels, dict(names), suv_max=6.0,
                                          title=f"{method}: coronal MIP", axial_through=hottest)
    return written, report


def summary_line(name: str, q: Quantities | Mapping) -> str:
    q = q.as_dict() if isinstance(q, Quantities) else q
    return (f"{name}: SUVmax {q['suv_max']:.2f}  SUVmean {q['suv_mean']:.2f}  SUVpeak {q['suv_peak']:.2f}  "
            f"MTV {q['mtv_ml']:.2f} mL  TLG {q['tlg']:.1f}")
