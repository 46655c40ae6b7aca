"""Time and memory to read a whole-body PET: our DICOM reader, our NIfTI reader, and dcm2niix on the same series.

    python benchmarks/io_bench.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import measure, report  # noqa: E402

from seganypet.io import read_pet, write_nifti  # noqa: E402
from seganypet.io.dicom_write import write_pet_dicom  # noqa: E402
from seganypet.phantom import PhantomConfig, generate_case  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    case = generate_case(0, PhantomConfig(scanner="siemens_biograph_vision"))  # 220 x 220 x ~330
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_pet_dicom(case.image, tmp / "dicom", case.acquisition)
        write_nifti(case.image, tmp / "pet.nii.gz")
        shape = "x".join(map(str, case.image.shape))
        for label, path in (("seganypet DICOM -> SUV", tmp / "dicom"), ("seganypet NIfTI", tmp / "pet.nii.gz")):
            _, seconds, peak = measure(lambda path=path: read_pet(path), args.repeat)
            rows.append({"reader": label, "shape": shape, "seconds": seconds, "peak_MB": peak})
        if shutil.which("dcm2niix"):
            best = float("inf")
            for n in range(args.repeat):
                out = tmp / f"d{n}"
                out.mkdir()
                t = time.perf_counter()
                subprocess.run(["dcm2niix", "-z", "n", "-o", str(out), str(tmp / "dicom")], check=True, capture_output=True)
                best = min(best, time.perf_counter() - t)
            rows.append({"reader": "dcm2niix (uncompressed NIfTI)", "shape": shape, "seconds": best, "peak_MB": "n/a"})
            rows[0]["ratio_to_dcm2niix"] = rows[0]["seconds"] / best
    report("io_bench", rows)


if __name__ == "__main__":
    main()
