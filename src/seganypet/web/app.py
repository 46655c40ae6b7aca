"""The local web viewer: a FastAPI app that keeps one interactive `Session` per opened scan.

The page (NiiVue, vendored under ``static/``) shows the PET and a label overlay; every click goes to
the server in millimetres of the NIfTI the page was given (RAS), and the server converts it with that
image's inverse affine: NiiVue's own voxel indices are in its reoriented grid whenever the affine is not
diagonal, so the page never sends voxel indices. Each answer carries only the rewritten box of labels,
so the page patches its overlay instead of reloading the volume.

Safe by default: it serves the packaged page and the scans the user opened, nothing else from disk;
uploads are size-limited and must read as a PET image; idle sessions are evicted and the number of
sessions is bounded, so memory stays bounded.
"""

from __future__ import annotations

import base64
import gzip
import io
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from seganypet.errors import SegAnyPetError
from seganypet.infer import Session
from seganypet.io import PetImage, Reorientation, read_pet
from seganypet.modeling import SegAnyPet
from seganypet.quant import quantify
from seganypet.report import write_outputs
from seganypet.viz import to_lps_canonical

STATIC = Path(__file__).parent / "static"
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")  # single-file volumes; a DICOM series comes as .zip
EXPORTS = {"mask.nii.gz": "mask", "seg.dcm": "dicom_seg", "report.json": "json", "report.csv": "csv"}


@dataclass(frozen=True)
class Limits:
    upload_mb: float = 1024.0  # a whole-body PET is 50-300 MB as float32 NIfTI, less as DICOM zip
    sessions: int = 8  # open scans held at once (~3 bytes x 4 per voxel each); the least recently used goes
    idle_s: float = 3600.0  # a session untouched this long is dropped


@dataclass
class Opened:
    """One opened scan and its interactive session; ``lock`` serialises prompts on it."""

    name: str
    image: PetImage
    session: Session
    workdir: Path | None = None  # extracted DICOM upload, kept while the session lives (DICOM SEG needs it)
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.monotonic)
    quantities: dict[int, dict] = field(default_factory=dict)


class Point(BaseModel):
    mm: tuple[float, float, float] = Field(description="RAS millimetres, as in the NIfTI the page was given")
    positive: bool = True


class Box(BaseModel):
    lo_mm: tuple[float, float, float]
    hi_mm: tuple[float, float, float]


class Sessions:
    """Open scans by id, with LRU and idle eviction."""

    def __init__(self, model: SegAnyPet, limits: Limits) -> None:
        self.model, self.limits = model, limits
        self._open: dict[str, Opened] = {}
        self._lock = threading.Lock()

    def open(self, image: PetImage, name: str, workdir: Path | None = None) -> str:
        session = Session(self.model)
        session.set_image(image)
        sid = uuid.uuid4().hex
        with self._lock:
            self._evict(keep=self.limits.sessions - 1)
            self._open[sid] = Opened(name, image, session, workdir)
        return sid

    def get(self, sid: str) -> Opened:
        with self._lock:
            self._evict(keep=self.limits.sessions)
            opened = self._open.get(sid)
            if opened is None:
                raise HTTPException(404, f"unknown or expired session {sid!r}: open the scan again")
            opened.used = time.monotonic()
            return opened

    def close(self, sid: str) -> None:
        with self._lock:
            opened = self._open.pop(sid, None)
        if opened is None:
            raise HTTPException(404, f"unknown or expired session {sid!r}")
        _discard(opened)

    def __len__(self) -> int:
        return len(self._open)

    def _evict(self, keep: int) -> None:
        now = time.monotonic()
        for sid in [s for s, o in self._open.items() if now - o.used > self.limits.idle_s]:
            _discard(self._open.pop(sid))
        while len(self._open) > max(keep, 0):
            oldest = min(self._open, key=lambda s: self._open[s].used)
            _discard(self._open.pop(oldest))


def _discard(opened: Opened) -> None:
    if opened.workdir is not None:
        shutil.rmtree(opened.workdir, ignore_errors=True)


# ---- what the page is sent ----------------------------------------------------------------------
def nifti_bytes(image: PetImage, array: np.ndarray, display_range: tuple[float, float] | None = None) -> bytes:
    """``array`` on the image's grid as gzipped NIfTI with the RAS affine the server converts clicks with.
    ``display_range``: the header's cal_min/cal_max, which NiiVue keeps instead of guessing from the data."""
    affine = image.affine_in("RAS")
    nifti = nib.Nifti1Image(array, affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    if display_range is not None:
        nifti.header["cal_min"], nifti.header["cal_max"] = display_range
    return gzip.compress(nifti.to_bytes(), compresslevel=1)  # level 1: 5x faster than 9, a few % larger


PALETTE = np.array([[230, 25, 25], [25, 150, 230], [25, 180, 50], [230, 150, 0], [150, 50, 200]]) / 255  # as viewer.js
LABEL_STEP = 40  # as viewer.js: overlay values 40, 80, ... 200, each coloured flat over +-19


def display_labels(labels: np.ndarray) -> np.ndarray:
    """The overlay the page draws: label n as LABEL_STEP * (1 + (n - 1) mod 5), coloured PALETTE[(n - 1) mod 5]."""
    return np.where(labels > 0, LABEL_STEP * ((labels.astype(np.int64) - 1) % len(PALETTE) + 1), 0).astype(np.uint8)


def region_patch(labels: np.ndarray, region) -> dict:
    """The rewritten box of labels, in NIfTI (Fortran) order, for the page to paste into its overlay."""
    block = display_labels(labels[region])
    return {"region": [[s.start, s.stop] for s in region],
            "labels": base64.b64encode(block.tobytes(order="F")).decode()}


def coronal_mip(image: PetImage, labels: np.ndarray, suv_max: float) -> bytes:
    """Coronal MIP as a PNG, radiological (patient right on the left, head up), square millimetre pixels,
    the labels' projections tinted on it."""
    import matplotlib.pyplot as plt
    from scipy import ndimage

    (suv, lab), spacing = to_lps_canonical(image, image.array, labels)
    grey = 1 - np.clip(suv.max(1) / suv_max, 0, 1)  # inverted grey: hot is dark
    rgb = np.repeat(grey[..., None], 3, -1)
    projected = lab.max(1)
    tint = PALETTE[(projected - 1) % len(PALETTE)]
    rgb = np.where(projected[..., None] > 0, 0.5 * rgb + 0.5 * tint, rgb)
    zoom = (spacing[0] / min(spacing[0], spacing[2]), spacing[2] / min(spacing[0], spacing[2]), 1)
    rgb = ndimage.zoom(rgb, zoom, order=1).clip(0, 1)
    out = io.BytesIO()
    plt.imsave(out, rgb.transpose(1, 0, 2)[::-1], format="png")  # rows: superior first; columns: patient right first
    return out.getvalue()


def mip_hottest_voxel(image: PetImage, u: float, v: float) -> np.ndarray:
    """The voxel (input grid) behind a point of the coronal MIP (u: 0 at the image's left, v: 0 at the top):
    the hottest one along that anterior-posterior ray, where a reader would want to go."""
    orient = Reorientation.to_lps(image)
    suv = orient.array(image.array)
    column = min(int(u * suv.shape[0]), suv.shape[0] - 1)
    row = min(int((1 - v) * suv.shape[2]), suv.shape[2] - 1)
    return orient.point_back([column, int(np.argmax(suv[column, :, row])), row]).astype(int)


def _measure(opened: Opened, label: int) -> None:
    mask = opened.session.target_buffer == label
    if mask.any():
        opened.quantities[label] = quantify(opened.image, mask).as_dict()
    else:
        opened.quantities.pop(label, None)


def target_table(opened: Opened) -> list[dict]:
    return [{"label": label, "name": f"target {label}", **q} for label, q in sorted(opened.quantities.items())]


# ---- the app ---------------------------------------------------------------------------------------
def create_app(model: SegAnyPet, scan: PetImage | None = None, limits: Limits = Limits()) -> FastAPI:
    """The viewer app. ``scan``: the image named on the command line (opened by the page on request)."""
    app = FastAPI(title="seganypet viewer", docs_url=None, redoc_url=None)
    sessions = Sessions(model, limits)
    app.state.sessions = sessions

    @app.exception_handler(SegAnyPetError)
    async def bad_input(request: Request, err: SegAnyPetError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict:
        return {"scan": scan.source.name if scan is not None and scan.source else ("scan" if scan is not None else None),
                "model": model.config.name, "upload_mb": limits.upload_mb, "sessions": len(sessions)}

    def opened_answer(sid: str) -> dict:
        o = sessions.get(sid)
        return {"id": sid, "name": o.name, "shape": list(o.image.shape), "spacing_mm": [float(s) for s in o.image.spacing],
                "dicom": bool(o.image.meta.source_files), "units": o.image.units, "targets": target_table(o),
                "label": o.session.label}

    @app.post("/api/sessions/scan")
    def open_scan() -> dict:
        if scan is None:
            raise HTTPException(400, "no scan was given on the command line: upload one or open the phantom")
        name = scan.source.name if scan.source else "scan"
        return opened_answer(sessions.open(scan, name))

    @app.post("/api/sessions/phantom")
    def open_phantom(seed: int = 0) -> dict:
        from seganypet.phantom import PhantomConfig, generate_case

        case = generate_case(seed, PhantomConfig(max_lesions=6))
        return opened_answer(sessions.open(case.image, f"phantom {seed}"))

    @app.post("/api/sessions/upload")
    def open_upload(file: UploadFile) -> dict:
        name = Path(file.filename or "").name
        if not name.lower().endswith(VOLUME_SUFFIXES + (".zip",)):
            raise HTTPException(415, f"{name or 'the upload'}: not a PET image file; send NIfTI (.nii, .nii.gz), "
                                     ".nrrd, .mha, or a DICOM series as .zip")
        workdir = Path(tempfile.mkdtemp(prefix="seganypet-upload-"))
        try:
            path = _receive(file, workdir / name, limits.upload_mb)
            if name.lower().endswith(".zip"):
                path = _unzip_series(path, workdir / "dicom", limits.upload_mb)
            image = read_pet(path)
            image.source = Path(name)
        except SegAnyPetError as err:  # named as the user sent it, not by the server's temporary folder
            shutil.rmtree(workdir, ignore_errors=True)
            inside = err.path is None or err.path.is_relative_to(workdir)  # the upload, or a file unzipped from it
            raise SegAnyPetError(err.problem, name if inside else err.path) from None
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        keep = workdir if image.meta.source_files else None
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        return opened_answer(sessions.open(image, name, keep))

    @app.get("/api/sessions/{sid}")
    def describe(sid: str) -> dict:
        return opened_answer(sid)

    @app.delete("/api/sessions/{sid}")
    def close(sid: str) -> dict:
        sessions.close(sid)
        return {"closed": sid}

    @app.get("/api/sessions/{sid}/image.nii.gz")
    def image(sid: str) -> Response:
        o = sessions.get(sid)
        return Response(nifti_bytes(o.image, o.image.array.astype(np.float32)), media_type="application/gzip")

    @app.get("/api/sessions/{sid}/labels.nii.gz")
    def labels(sid: str) -> Response:
        o = sessions.get(sid)
        with o.lock:
            data = display_labels(o.session.target_buffer)
        return Response(nifti_bytes(o.image, data, (0, 255)), media_type="application/gzip")  # colours by label value

    @app.get("/api/sessions/{sid}/mip.png")
    def mip(sid: str, suv_max: float = 5.0) -> Response:
        o = sessions.get(sid)
        if not 0 < suv_max < 1000:
            raise HTTPException(422, f"suv_max {suv_max:g} is not a usable window top")
        with o.lock:
            labels_now = o.session.target_buffer.copy()
        return Response(coronal_mip(o.image, labels_now, suv_max), media_type="image/png")

    @app.get("/api/sessions/{sid}/mip_pick")
    def mip_pick(sid: str, u: float, v: float) -> dict:
        o = sessions.get(sid)
        if not (0 <= u <= 1 and 0 <= v <= 1):
            raise HTTPException(422, f"MIP position ({u:g}, {v:g}) lies outside the picture (0..1)")
        ijk = mip_hottest_voxel(o.image, u, v)
        return {"voxel": ijk.tolist(), "mm": o.image.voxel_to_world(ijk, "RAS")[0].tolist(),
                "suv": float(o.image.array[tuple(ijk)])}

    def prompt(sid: str, act) -> dict:
        o = sessions.get(sid)
        with o.lock:
            started = time.perf_counter()
            interaction = act(o)
            _measure(o, interaction.label)
            return {"label": interaction.label, "score": interaction.score, **region_patch(o.session.target_buffer, interaction.region),
                    "targets": target_table(o), "seconds": time.perf_counter() - started}

    def voxel(o: Opened, mm) -> np.ndarray:
        return o.image.world_to_voxel(np.asarray(mm, float), "RAS")[0]

    @app.post("/api/sessions/{sid}/point")
    def point(sid: str, body: Point) -> dict:
        return prompt(sid, lambda o: o.session.add_point(voxel(o, body.mm), body.positive))

    @app.post("/api/sessions/{sid}/box")
    def box(sid: str, body: Box) -> dict:
        return prompt(sid, lambda o: o.session.add_box(voxel(o, body.lo_mm), voxel(o, body.hi_mm)))

    @app.post("/api/sessions/{sid}/undo")
    def undo(sid: str) -> dict:
        o = sessions.get(sid)
        with o.lock:
            region = o.session.undo()
            if region is None:
                raise HTTPException(409, "nothing to undo")
            label = o.session.label
            _measure(o, label)
            return {"label": label, **region_patch(o.session.target_buffer, region), "targets": target_table(o)}

    @app.post("/api/sessions/{sid}/new_target")
    def new_target(sid: str) -> dict:
        o = sessions.get(sid)
        with o.lock:
            return {"label": o.session.new_target()}

    @app.post("/api/sessions/{sid}/reset")
    def reset(sid: str) -> dict:
        o = sessions.get(sid)
        with o.lock:
            o.session.reset()
            o.quantities.clear()
            return {"label": o.session.label, "targets": []}

    @app.get("/api/sessions/{sid}/export/{what}")
    def export(sid: str, what: str) -> Response:
        o = sessions.get(sid)
        if what not in EXPORTS:
            raise HTTPException(404, f"no export {what!r}; choose one of {', '.join(EXPORTS)}")
        if what == "seg.dcm" and not o.image.meta.source_files:
            raise HTTPException(409, "DICOM SEG needs a DICOM input: this scan was opened from a volume file")
        with o.lock:
            labels_now = o.session.target_buffer.copy()
        if not labels_now.any():
            raise HTTPException(409, "nothing segmented yet: click on a structure first")
        names = {label: f"target {label}" for label in np.unique(labels_now) if label}
        with tempfile.TemporaryDirectory(prefix="seganypet-export-") as tmp:
            written, _ = write_outputs(o.image, labels_now, names, tmp, "seganypet viewer", picture=False)
            content = written[EXPORTS[what]].read_bytes()
        media = {"json": "application/json", "csv": "text/csv"}.get(what.rsplit(".", 1)[-1], "application/octet-stream")
        stem = Path(o.name).name.split(".")[0] or "scan"
        return Response(content, media_type=media, headers={"Content-Disposition": f'attachment; filename="{stem}_{what}"'})

    return app


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0):
    """Run ``app`` with uvicorn in a daemon thread (notebooks, tests, scripted screenshots).
    Returns the base URL and the server; set ``server.should_exit = True`` to stop it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return f"http://{host}:{bound}", server


def _receive(file: UploadFile, path: Path, limit_mb: float) -> Path:
    """Copy the upload to ``path`` in chunks, refusing it as soon as it passes the limit."""
    limit, size = int(limit_mb * 2**20), 0
    with path.open("wb") as out:
        while chunk := file.file.read(2**20):
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"{path.name}: upload larger than the limit of {limit_mb:g} MB "
                                         "(start the viewer with --max-upload-mb to raise it)")
            out.write(chunk)
    return path


def _unzip_series(path: Path, folder: Path, limit_mb: float) -> Path:
    """The files of a zipped DICOM series, flattened into ``folder`` (no member can write outside it)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise SegAnyPetError("not a readable zip archive", path.name) from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > limit_mb * 2**20:
            raise HTTPException(413, f"{path.name}: unpacks to more than the limit of {limit_mb:g} MB")
        folder.mkdir()
        for n, member in enumerate(members):
            with archive.open(member) as src, (folder / f"{n:06d}.dcm").open("wb") as dst:
                shutil.copyfileobj(src, dst)
    if not members:
        raise SegAnyPetError("the zip archive holds no files", path.name)
    return folder
