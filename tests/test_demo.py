"""The README's main job, end to end."""

import json

from seganypet.demo import run_demo


def test_demo_writes_masks_report_and_picture(tmp_path):
    result = run_demo(tmp_path, seed=0)
    assert {"mask", "dicom_seg", "json", "csv", "picture"} <= set(result["files"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["structures"]) == len(result["dice"]) >= 1
    # one click on the phantom's largest lesion outlines it (the bound is loose: a classical method, noisy PET)
    assert max(d for name, d in result["dice"].items() if name.startswith("lesion")) > 0.5
    # one click on the liver, and the shipped model outlines it (held-out liver Dice at 1 click: 0.75-0.96 on 30 phantoms)
    assert result["dice"]["liver"] > 0.6
