"""The README's main job, end to end."""

import json

from seganypet.demo import run_demo


def test_demo_writes_masks_report_and_picture(tmp_path):
    result = run_demo(tmp_path, seed=0)
    assert {"mask", "dicom_seg", "json", "csv", "picture"} <= set(result["files"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["structures"]) == len(result["dice"]) >= 1
    # one click on the phantom's largest lesion outlines it (the bound is loose: a classical method, noisy PET)
    assert max(result["dice"].values()) > 0.5
