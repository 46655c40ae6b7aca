// seganypet viewer page: NiiVue shows the PET and a label overlay; every prompt goes to the server in
// millimetres (NiiVue's world space of the NIfTI it was given), never as NiiVue voxel indices, which are
// in NiiVue's reoriented grid whenever the affine is not diagonal.
"use strict";

const PALETTE = [[230, 25, 25], [25, 150, 230], [25, 180, 50], [230, 150, 0], [150, 50, 200]]; // as the server's MIP
const DRAG_PX = 5; // a press that moves less than this is a click, more is a box
const $ = (id) => document.getElementById(id);
const state = { sid: null, label: 1, dims: null, dicom: false, down: null, up: null, busy: false };

const nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false, dragAndDropEnabled: false,
                                crosshairColor: [0.2, 0.8, 1.0, 0.7], crosshairGap: 12, isOrientationTextVisible: true });
nv.attachToCanvas($("gl"));
nv.opts.dragModePrimary = nv.dragModes.callbackOnly; // left press: ours (click or box), not NiiVue's crosshair
nv.opts.dragMode = nv.dragModes.callbackOnly; // right press: ours (negative click)
nv.opts.multiplanarShowRender = 0; // SHOW_RENDER.NEVER: three slices, no 3D render
nv.setRadiologicalConvention(true); // PET reading: patient's right on the viewer's left
nv.addColormap("seganypet_inverted_grey", { R: [255, 0], G: [255, 0], B: [255, 0], A: [255, 255], I: [0, 255] });

function colormapName() {
  const chosen = $("colormap").value;
  return chosen === "gray-inverted" ? "seganypet_inverted_grey" : chosen;
}

// The server sends label n as LABEL_STEP * (1 + (n - 1) mod 5) on the overlay's 0..255 range (the labels NIfTI
// says cal 0..255 in its header). Each colour holds flat for +-19 around its value: NiiVue 0.69 samples its
// colour table half a step off, so one stop per value blends neighbours (and its label-colormap path tints 0).
const LABEL_STEP = 40;
const LABEL_COLORS = (() => {
  const stops = [[0, [0, 0, 0], 0], [LABEL_STEP / 2, [0, 0, 0], 0]];
  PALETTE.forEach((color, n) => {
    const value = LABEL_STEP * (n + 1);
    stops.push([value - 19, color, 255], [value + 19, color, 255]);
  });
  stops.push([255, PALETTE.at(-1), 255]);
  return { R: stops.map((s) => s[1][0]), G: stops.map((s) => s[1][1]), B: stops.map((s) => s[1][2]),
           A: stops.map((s) => s[2]), I: stops.map((s) => s[0]) };
})();

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(method, path, body) {
  const init = { method };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers = { "Content-Type": "application/json" }; }
  const response = await fetch(path, init);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.detail || `${response.status} ${response.statusText}`);
  return answer;
}

async function show(info) {
  Object.assign(state, { sid: info.id, label: info.label, dims: info.shape, dicom: info.dicom });
  status(`loading ${info.name} …`);
  const base = `/api/sessions/${info.id}`;
  await nv.loadVolumes([
    { url: `${base}/image.nii.gz`, name: "pet.nii.gz", colormap: colormapName(),
      cal_min: Number($("suv-min").value), cal_max: Number($("suv-max").value) },
    { url: `${base}/labels.nii.gz`, name: "labels.nii.gz", opacity: 0.6 },
  ]);
  nv.addColormap("seganypet_labels", LABEL_COLORS); // added and set after loading: before, NiiVue drew a wrong table
  nv.setColormap(nv.volumes[1].id, "seganypet_labels");

  setLayout();
  renderTargets(info.targets);
  refreshMip();
  $("exports").hidden = false;
  $("export-seg").hidden = !info.dicom;
  document.body.dataset.sid = info.id; // read by the browser test
  status(`${info.name}: ${info.shape.join("×")} voxels of ${info.spacing_mm.map((s) => s.toFixed(2)).join("×")} mm, ${info.units}`);
}

async function open(action) {
  try { await show(await action()); } catch (err) { status(err.message, true); }
}

function setLayout() {
  const types = { multi: 3, axial: 0, coronal: 1, sagittal: 2 }; // SLICE_TYPE
  nv.setSliceType(types[$("layout").value]);
}

function setWindow() {
  if (!nv.volumes.length) return;
  const volume = nv.volumes[0];
  volume.cal_min = Number($("suv-min").value);
  volume.cal_max = Math.max(Number($("suv-max").value), volume.cal_min + 0.1);
  volume.colormap = colormapName();
  nv.updateGLVolume();
  refreshMip();
}

function applyPatch(answer) {
  // paste the rewritten box of labels (NIfTI order: i fastest) into the overlay NiiVue holds
  const overlay = nv.volumes[1];
  const [nx, ny] = state.dims;
  const [[i0, i1], [j0, j1], [k0, k1]] = answer.region;
  const bytes = Uint8Array.from(atob(answer.labels), (c) => c.charCodeAt(0));
  let n = 0;
  for (let k = k0; k < k1; k++)
    for (let j = j0; j < j1; j++)
      for (let i = i0; i < i1; i++) overlay.img[i + nx * (j + ny * k)] = bytes[n++];
  overlay.calMinMax(); // NiiVue scales by the data range it measured at load (0..0 for an empty overlay)
  nv.updateGLVolume();
}

function renderTargets(targets) {
  const body = $("targets").tBodies[0];
  body.replaceChildren();
  for (const t of targets) {
    const row = body.insertRow();
    row.dataset.label = t.label;
    if (t.label === state.label) row.className = "current";
    const [r, g, b] = PALETTE[(t.label - 1) % PALETTE.length];
    const name = row.insertCell();
    name.innerHTML = `<span class="swatch" style="background: rgb(${r},${g},${b})"></span>`;
    name.append(t.name);
    for (const key of ["suv_max", "suv_mean", "suv_peak", "mtv_ml", "tlg"]) {
      const cell = row.insertCell();
      cell.dataset.key = key;
      cell.dataset.value = t[key];
      cell.textContent = t[key].toFixed(key === "tlg" ? 1 : 2);
    }
  }
}

function refreshMip() {
  if (!state.sid) return;
  $("mip").src = `/api/sessions/${state.sid}/mip.png?suv_max=${Number($("suv-max").value)}&t=${Date.now()}`;
  $("mip").hidden = false;
}

async function prompt(path, body) {
  if (!state.sid || state.busy) return;
  state.busy = true;
  const started = performance.now();
  try {
    const answer = await api("POST", `/api/sessions/${state.sid}/${path}`, body);
    state.label = answer.label;
    if (answer.region) applyPatch(answer);
    renderTargets(answer.targets);
    refreshMip();
    const server = answer.seconds === undefined ? "" : ` (model ${answer.seconds.toFixed(2)} s)`;
    status(`target ${answer.label}: ${path} in ${((performance.now() - started) / 1000).toFixed(2)} s${server}`);
    document.body.dataset.prompts = String(Number(document.body.dataset.prompts || 0) + 1); // read by the browser test
  } catch (err) {
    status(err.message, true);
  } finally {
    state.busy = false;
  }
}

function worldMm(frac) {
  const mm = nv.frac2mm(frac, 0, true); // true: the image's own affine, not NiiVue's resliced one
  return [mm[0], mm[1], mm[2]];
}

// for scripted use (the browser test, docs/viewer_screenshot.py): move the crosshair to a world point (RAS mm)
// and return where it is drawn, in page pixels, so a real mouse click can land there
function canvasPositionOf(mm) {
  const frac = nv.mm2frac(mm, 0, true);
  nv.scene.crosshairPos = frac;
  nv.updateGLVolume();
  const [x, y] = nv.frac2canvasPos(frac);
  const rect = nv.canvas.getBoundingClientRect();
  return [rect.left + x * rect.width / nv.canvas.width, rect.top + y * rect.height / nv.canvas.height];
}

function inside(frac) {
  return frac && frac.every((f) => f >= 0 && f <= 1);
}

function pressMoved() {
  const { down, up } = state;
  return down && up && Math.hypot(up.x - down.x, up.y - down.y) >= DRAG_PX;
}

const canvas = $("gl");
canvas.addEventListener("pointerdown", (e) => { state.down = { x: e.clientX, y: e.clientY, shift: e.shiftKey, button: e.button }; state.up = null; });
canvas.addEventListener("pointerup", (e) => { state.up = { x: e.clientX, y: e.clientY }; });
canvas.addEventListener("contextmenu", (e) => e.preventDefault());

nv.onMouseUp = (ui) => {
  const down = state.down;
  if (!down || pressMoved() || !inside(ui.fracPos)) return; // drags are boxes (below)
  const positive = !(down.shift || down.button === 2);
  nv.scene.crosshairPos = ui.fracPos; // show where the click landed
  nv.drawScene();
  prompt("point", { mm: worldMm(ui.fracPos), positive });
};

nv.onDragRelease = (drag) => {
  if (!pressMoved() || drag.tileIdx < 0 || !inside(drag.fracStart) || !inside(drag.fracEnd)) return;
  // a rectangle on one slice becomes a 3D box as deep as its shorter side, centred on that slice
  const a = worldMm(drag.fracStart), b = worldMm(drag.fracEnd);
  const normal = [2, 1, 0][drag.axCorSag]; // axial: S-I (z), coronal: A-P (y), sagittal: R-L (x)
  const sides = [0, 1, 2].filter((axis) => axis !== normal).map((axis) => Math.abs(a[axis] - b[axis]));
  const half = Math.min(...sides) / 2;
  a[normal] -= half;
  b[normal] += half;
  prompt("box", { lo_mm: a, hi_mm: b });
};

$("mip").addEventListener("click", async (e) => {
  const rect = e.target.getBoundingClientRect();
  try {
    const pick = await api("GET", `/api/sessions/${state.sid}/mip_pick?u=${(e.clientX - rect.left) / rect.width}&v=${(e.clientY - rect.top) / rect.height}`);
    nv.scene.crosshairPos = nv.mm2frac(pick.mm, 0, true);
    nv.updateGLVolume();
    status(`hottest voxel on that line: SUV ${pick.suv.toFixed(2)} at voxel ${pick.voxel.join(", ")}`);
  } catch (err) { status(err.message, true); }
});

async function newTarget() {
  if (!state.sid) return;
  const answer = await api("POST", `/api/sessions/${state.sid}/new_target`);
  state.label = answer.label;
  status(`new target ${answer.label}: click on it`);
}

async function reset() {
  if (!state.sid) return;
  const answer = await api("POST", `/api/sessions/${state.sid}/reset`);
  state.label = answer.label;
  nv.volumes[1].img.fill(0);
  nv.updateGLVolume();
  renderTargets([]);
  refreshMip();
  status("all targets cleared");
}

$("undo").onclick = () => prompt("undo");
$("new-target").onclick = () => newTarget().catch((err) => status(err.message, true));
$("reset").onclick = () => reset().catch((err) => status(err.message, true));
$("layout").onchange = setLayout;
$("colormap").onchange = setWindow;
$("suv-min").onchange = setWindow;
$("suv-max").onchange = setWindow;
$("open-phantom").onclick = () => open(() => api("POST", "/api/sessions/phantom?seed=0"));
$("open-scan").onclick = () => open(() => api("POST", "/api/sessions/scan"));
$("file").onchange = (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  status(`uploading ${file.name} …`);
  open(() => api("POST", "/api/sessions/upload", form));
};
async function download(what) {
  const response = await fetch(`/api/sessions/${state.sid}/export/${what}`);
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).detail || response.statusText);
  const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/)?.[1] || what;
  const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(await response.blob()), download: name });
  link.click();
  URL.revokeObjectURL(link.href);
}

for (const link of document.querySelectorAll("#exports a")) {
  link.href = "#";
  link.onclick = (e) => {
    e.preventDefault();
    if (state.sid) download(link.dataset.what).catch((err) => status(err.message, true));
  };
}
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT") return;
  if (e.key === "u") prompt("undo");
  if (e.key === "n") newTarget().catch((err) => status(err.message, true));
});

// start: the scan named on the command line if there is one
api("GET", "/api/info").then((info) => {
  if (info.scan) {
    $("open-scan").hidden = false;
    $("open-scan").textContent = `Open ${info.scan}`;
    open(() => api("POST", "/api/sessions/scan"));
  }
}).catch((err) => status(err.message, true));
