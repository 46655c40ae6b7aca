"""The viewer's API: every endpoint, its bad inputs, eviction, and 8 sessions clicking at once on loopback.

Clicks are sent in RAS millimetres as the page sends them, on an image with a rotated and flipped
affine, so a wrong conversion would land the click off the object. The stand-in model segments the
hot voxels around a click, so every expected mask is known exactly.
"""

from __future__ import annotations

import base64
import gzip
import io
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import HotVoxelModel, add_sphere, oblique_image, write_series
from seganypet.infer import Session
from seganypet.io import PetImage, read_pet, write_nifti
from seganypet.quant import quantify
from seganypet.web import Limits, create_app, serve_in_thread

SCAN = oblique_image(shape=(70, 60, 45))
CENTRES = [SCAN.voxel_to_world(ijk)[0] for ijk in [(18, 18, 12), (50, 18, 30), (18, 42, 30), (50, 42, 12)]]  # LPS mm
RADII = [8.0, 11.0, 14.0, 17.0]


@pytest.fixture(scope="module")
def scan() -> tuple[PetImage, list[np.ndarray]]:
    image = SCAN
    spheres = [add_sphere(image, c, r) for c, r in zip(CENTRES, RADII)]
    assert all(s.sum() > 20 for s in spheres) and not np.any(np.sum(spheres, 0) > 1)
    return image, spheres


@pytest.fixture()
def client(scan) -> TestClient:
    return TestClient(create_app(HotVoxelModel(), scan[0], Limits(upload_mb=1, sessions=3)))


def ras_mm(image: PetImage, lps_mm) -> list[float]:
    """What the page sends: NiiVue's world space of the NIfTI it was given, RAS."""
    return [float(v) for v in image.voxel_to_world(image.world_to_voxel(lps_mm), "RAS")[0]]


def python_mask(image: PetImage, centre_lps) -> np.ndarray:
    """The same click through the Python API."""
    session = Session(HotVoxelModel())
    session.set_image(image)
    session.add_point(image.world_to_voxel(centre_lps)[0])
    return session.mask


def dice(a, b) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def labels_of(answer: dict, shape) -> tuple[tuple[slice, ...], np.ndarray]:
    region = tuple(slice(a, b) for a, b in answer["region"])
    size = [b - a for a, b in answer["region"]]
    return region, np.frombuffer(base64.b64decode(answer["labels"]), np.uint8).reshape(size, order="F")


def test_info_open_and_describe(client, scan):
    assert client.get("/api/info").json()["model"] == "test"
    opened = client.post("/api/sessions/scan").json()
    assert opened["shape"] == list(scan[0].shape) and opened["targets"] == [] and opened["label"] == 1
    assert client.get(f"/api/sessions/{opened['id']}").json()["id"] == opened["id"]
    assert client.get("/").text.startswith("<!doctype html>")
    assert client.get("/static/vendor/niivue.umd.js").status_code == 200
    assert client.get("/static/vendor/NIIVUE_LICENSE").text.startswith("BSD 2-Clause")


def test_no_file_outside_the_package_page_is_served(client):
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/../../../../etc/passwd", "/etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "root:" not in response.text and "FastAPI" not in response.text


def test_image_sent_to_the_page_carries_the_affine_clicks_are_converted_with(client, scan):
    image = scan[0]
    sid = client.post("/api/sessions/scan").json()["id"]
    nifti = nib.Nifti1Image.from_bytes(gzip.decompress(client.get(f"/api/sessions/{sid}/image.nii.gz").content))
    np.testing.assert_allclose(nifti.affine, image.affine_in("RAS"), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), image.array)
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(client.get(f"/api/sessions/{sid}/labels.nii.gz").content))
    assert labels.get_data_dtype() == np.uint8 and not np.asarray(labels.dataobj).any()


def test_click_in_mm_on_an_oblique_image_segments_the_object_and_reports_its_quantities(client, scan):
    image, spheres = scan
    sid = client.post("/api/sessions/scan").json()["id"]
    answer = client.post(f"/api/sessions/{sid}/point", json={"mm": ras_mm(image, CENTRES[1])}).json()
    region, block = labels_of(answer, image.shape)
    full = np.zeros(image.shape, np.uint8)
    full[region] = block
    expected_mask = python_mask(image, CENTRES[1])
    np.testing.assert_array_equal(full > 0, expected_mask)  # the same voxels as the Python API's
    assert dice(full > 0, spheres[1]) > 0.8  # and they are the clicked object (a misplaced click gives 0)
    expected = quantify(image, expected_mask)
    (row,) = answer["targets"]
    assert row["label"] == 1 and row["voxels"] == expected.voxels
    for key in ("suv_max", "suv_mean", "suv_peak", "mtv_ml", "tlg"):
        assert row[key] == pytest.approx(getattr(expected, key), rel=1e-9), key


def test_box_negative_click_undo_new_target_and_reset(client, scan):
    image, spheres = scan
    sid = client.post("/api/sessions/scan").json()["id"]
    voxels = np.argwhere(spheres[3])
    lo = image.voxel_to_world(voxels.min(0), "RAS")[0].tolist()
    hi = image.voxel_to_world(voxels.max(0), "RAS")[0].tolist()
    first = client.post(f"/api/sessions/{sid}/box", json={"lo_mm": lo, "hi_mm": hi}).json()
    region, block = labels_of(first, image.shape)
    boxed = np.zeros(image.shape, bool)
    boxed[region] = block > 0
    assert dice(boxed, spheres[3]) > 0.85 and first["targets"][0]["voxels"] == boxed.sum()
    background = image.voxel_to_world((35, 30, 22), "RAS")[0].tolist()
    second = client.post(f"/api/sessions/{sid}/point", json={"mm": background, "positive": False})
    assert second.status_code == 200 and second.json()["label"] == 1
    undone = client.post(f"/api/sessions/{sid}/undo").json()  # back to the box's mask
    region, block = labels_of(undone, image.shape)
    assert undone["targets"][0]["voxels"] == boxed.sum() == (block > 0).sum()
    undone = client.post(f"/api/sessions/{sid}/undo").json()  # back to nothing
    assert undone["targets"] == [] and not labels_of(undone, image.shape)[1].any()
    assert client.post(f"/api/sessions/{sid}/new_target").json()["label"] == 1  # target 1 is empty again: kept
    client.post(f"/api/sessions/{sid}/point", json={"mm": ras_mm(image, CENTRES[3])})
    assert client.post(f"/api/sessions/{sid}/new_target").json()["label"] == 2
    client.post(f"/api/sessions/{sid}/point", json={"mm": ras_mm(image, CENTRES[2])})
    assert [t["label"] for t in client.get(f"/api/sessions/{sid}").json()["targets"]] == [1, 2]
    assert client.post(f"/api/sessions/{sid}/reset").json() == {"label": 1, "targets": []}
    assert client.post(f"/api/sessions/{sid}/undo").status_code == 409


def test_mip_picture_and_pick_go_to_the_hottest_voxel_on_the_line(client, scan):
    image, _ = scan
    sid = client.post("/api/sessions/scan").json()["id"]
    png = client.get(f"/api/sessions/{sid}/mip.png", params={"suv_max": 5})
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert client.get(f"/api/sessions/{sid}/mip.png", params={"suv_max": -1}).status_code == 422
    for u in np.linspace(0.05, 0.95, 7):
        for v in np.linspace(0.05, 0.95, 7):
            pick = client.get(f"/api/sessions/{sid}/mip_pick", params={"u": u, "v": v}).json()
            assert pick["suv"] == image.array[tuple(pick["voxel"])]
            np.testing.assert_allclose(image.world_to_voxel(pick["mm"], "RAS")[0], pick["voxel"], atol=1e-6)
    assert client.get(f"/api/sessions/{sid}/mip_pick", params={"u": 1.5, "v": 0.5}).status_code == 422


def test_exports(client, scan, tmp_path):
    image, _ = scan
    sid = client.post("/api/sessions/scan").json()["id"]
    assert client.get(f"/api/sessions/{sid}/export/report.json").status_code == 409  # nothing segmented yet
    client.post(f"/api/sessions/{sid}/point", json={"mm": ras_mm(image, CENTRES[3])})
    mask = client.get(f"/api/sessions/{sid}/export/mask.nii.gz")
    assert mask.status_code == 200 and "attachment" in mask.headers["content-disposition"]
    (tmp_path / "mask.nii.gz").write_bytes(mask.content)
    assert (np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj) == 1).sum() == client.get(
        f"/api/sessions/{sid}/export/report.json").json()["structures"][0]["total"]["voxels"]
    assert client.get(f"/api/sessions/{sid}/export/report.csv").text.startswith("structure,label")
    seg = client.get(f"/api/sessions/{sid}/export/seg.dcm")
    assert seg.status_code == 409 and "DICOM input" in seg.json()["detail"]
    assert client.get(f"/api/sessions/{sid}/export/passwd").status_code == 404


def test_bad_inputs_get_a_clear_4xx(client):
    sid = client.post("/api/sessions/scan").json()["id"]
    outside = client.post(f"/api/sessions/{sid}/point", json={"mm": [900.0, 900.0, 900.0]})
    assert outside.status_code == 422 and "outside the volume" in outside.json()["detail"]
    missing = client.post("/api/sessions/nosuchsession/point", json={"mm": [0, 0, 0]})
    assert missing.status_code == 404 and "unknown" in missing.json()["detail"]
    assert client.post(f"/api/sessions/{sid}/point", json={"mm": [1, 2]}).status_code == 422
    wrong_type = client.post("/api/sessions/upload", files={"file": ("notes.txt", b"hello")})
    assert wrong_type.status_code == 415 and "notes.txt" in wrong_type.json()["detail"]
    corrupt = client.post("/api/sessions/upload", files={"file": ("scan.nii.gz", b"\x1f\x8b not really gzip")})
    assert corrupt.status_code == 422 and "scan.nii.gz" in corrupt.json()["detail"]
    big = client.post("/api/sessions/upload", files={"file": ("big.nii", b"\0" * (2 * 2**20))})
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    not_zip = client.post("/api/sessions/upload", files={"file": ("series.zip", b"PK not a zip")})
    assert not_zip.status_code == 422 and "zip" in not_zip.json()["detail"]


def test_upload_of_a_volume_and_of_a_zipped_dicom_series(client, tmp_path):
    small = PetImage(np.random.default_rng(0).random((20, 18, 16), np.float32) * 3, np.diag([3.0, 3.0, 4.0, 1.0]), "RAS")
    write_nifti(small, tmp_path / "small.nii.gz")
    opened = client.post("/api/sessions/upload", files={"file": ("small.nii.gz", (tmp_path / "small.nii.gz").read_bytes())}).json()
    assert opened["shape"] == [20, 18, 16] and opened["dicom"] is False and opened["name"] == "small.nii.gz"

    values = np.full((24, 20, 12), 2000.0)  # Bq/mL: SUV 0.6 here, 6.3 in the hot block
    values[8:14, 8:14, 4:8] = 20000.0
    paths = write_series(tmp_path / "series", values)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for n, path in enumerate(paths):
            z.write(path, f"study/../../evil/{n}.dcm")  # a hostile member name must not escape the upload folder
    opened = client.post("/api/sessions/upload", files={"file": ("series.zip", archive.getvalue())}).json()
    assert opened["dicom"] is True and opened["shape"] == [24, 20, 12]
    expected = read_pet(tmp_path / "series")
    sid = opened["id"]
    click = expected.voxel_to_world((10, 10, 5), "RAS")[0].tolist()
    row = client.post(f"/api/sessions/{sid}/point", json={"mm": click}).json()["targets"][0]
    assert row["suv_max"] == pytest.approx(float(expected.array.max()), rel=1e-6)
    seg = client.get(f"/api/sessions/{sid}/export/seg.dcm")
    assert seg.status_code == 200 and seg.content[128:132] == b"DICM"
    assert not (tmp_path / "evil").exists()


def test_an_upload_that_is_not_a_pet_in_suv_is_refused_by_its_own_name(client, tmp_path):
    """A CT (or Bq/mL) volume sent to the viewer: refused in one line that names the file as the user sent it, not the
    server's temporary folder."""
    ct = PetImage(np.random.default_rng(0).uniform(-1024, 1000, (20, 18, 16)).astype(np.float32), np.eye(4), "RAS")
    write_nifti(ct, tmp_path / "ct.nii.gz")
    refused = client.post("/api/sessions/upload", files={"file": ("ct.nii.gz", (tmp_path / "ct.nii.gz").read_bytes())})
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("ct.nii.gz: ") and "CT" in refused.json()["detail"]


def test_a_phantom_seed_below_zero_is_a_clear_refusal(client):
    refused = client.post("/api/sessions/phantom", params={"seed": -1})
    assert refused.status_code == 422 and "seed" in refused.json()["detail"]


def test_sessions_are_bounded_least_recently_used_goes_first(client):
    first, second, third = (client.post("/api/sessions/scan").json()["id"] for _ in range(3))
    client.get(f"/api/sessions/{first}")  # touched: now the second is the oldest
    client.post("/api/sessions/scan")
    assert client.get(f"/api/sessions/{second}").status_code == 404
    assert client.get(f"/api/sessions/{first}").status_code == 200
    assert client.delete(f"/api/sessions/{third}").status_code == 200
    assert client.get(f"/api/sessions/{third}").status_code == 404


def test_idle_sessions_are_evicted(scan):
    client = TestClient(create_app(HotVoxelModel(), scan[0], Limits(idle_s=0.2)))
    sid = client.post("/api/sessions/scan").json()["id"]
    time.sleep(0.3)
    assert client.get(f"/api/sessions/{sid}").status_code == 404


def test_eight_sessions_clicking_at_once_on_loopback_stay_apart(scan):
    image, _ = scan
    base, server = serve_in_thread(create_app(HotVoxelModel(), image, Limits(sessions=8)))
    expected = [python_mask(image, c).sum() for c in CENTRES]
    start = threading.Barrier(8)

    def user(n: int) -> tuple[int, list[dict]]:
        with httpx.Client(base_url=base, timeout=60) as http:
            sid = http.post("/api/sessions/scan").raise_for_status().json()["id"]
            start.wait()
            mine = n % 4
            for _ in range(3):  # the same object three times: one target, its own voxels
                http.post(f"/api/sessions/{sid}/point", json={"mm": ras_mm(image, CENTRES[mine])}).raise_for_status()
            return mine, http.get(f"/api/sessions/{sid}").raise_for_status().json()["targets"]

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(user, range(8)))
    finally:
        server.should_exit = True
    for mine, targets in results:
        assert len(targets) == 1 and targets[0]["voxels"] == expected[mine]


def test_view_command_refuses_bad_input_in_one_line_before_serving(tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"not an image")
    for args, says in ((["-i", str(tmp_path / "scan.nii.gz")], "scan.nii.gz"),
                       (["--checkpoint", str(tmp_path / "none.pt")], "checkpoint not found"),
                       (["--max-sessions", "0"], "--max-sessions"),
                       (["--port", "99999"], "--port must be 1-65535")):
        result = subprocess.run([sys.executable, "-m", "seganypet.cli", "view", "--no-browser", *args],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr

