"""The viewer end to end in a real browser: headless Chromium opens the page on a phantom, a real mouse
click lands on a lesion, the overlay appears there, and the SUVmax the page shows equals the one computed
in Python for the same prompt.

Needs Debian's chromium (``apt-get install chromium``; .ci/run installs it) and Playwright from pip,
which drives it (Playwright's own browser download cannot work offline); skips, saying so, without them.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from conftest import ClickedHotObjectModel
from seganypet.demo import click_inside
from seganypet.infer import Session
from seganypet.phantom import PhantomConfig, generate_case
from seganypet.quant import quantify
from seganypet.web import create_app, serve_in_thread

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def test_click_on_a_phantom_lesion_shows_the_overlay_and_the_python_suvmax():
    from PIL import Image

    case = generate_case(0, PhantomConfig(max_lesions=6))  # what the page's "Phantom demo" opens
    lesion = max(case.lesions, key=lambda item: case.image.array[case.instances == item.id].mean())  # the hottest
    target_mm = case.image.voxel_to_world(click_inside(case.instances == lesion.id), "RAS")[0].tolist()
    base, server = serve_in_thread(create_app(ClickedHotObjectModel()))
    sent = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/point") else None)
            page.goto(base + "/")
            page.click("#open-phantom")
            page.wait_for_function("document.body.dataset.sid !== undefined", timeout=120_000)
            page.select_option("#layout", "axial")
            x, y = page.evaluate("(mm) => canvasPositionOf(mm)", target_mm)
            page.mouse.click(x, y)
            page.wait_for_function("document.body.dataset.prompts === '1'", timeout=60_000)
            overlay_voxels = page.evaluate("() => nv.volumes[1].img.reduce((n, v) => n + (v > 0), 0)")
            shown = float(page.get_attribute("#targets td[data-key=suv_max]", "data-value"))
            pixel = Image.open(io.BytesIO(page.screenshot())).convert("RGB").getpixel((round(x) + 3, round(y) + 3))
            browser.close()
    finally:
        server.should_exit = True
    assert not errors, errors

    # the same prompt in Python: the millimetres the page sent, through the session API
    (body,) = sent
    assert body["positive"] is True and np.linalg.norm(np.subtract(body["mm"], target_mm)) < 4.0  # a voxel's width
    session = Session(ClickedHotObjectModel())
    session.set_image(case.image)
    session.add_point(case.image.world_to_voxel(body["mm"], "RAS")[0])
    expected = quantify(case.image, session.mask)
    assert session.mask[tuple(click_inside(case.instances == lesion.id))]  # the lesion is in the mask
    assert overlay_voxels == expected.voxels
    assert shown == pytest.approx(expected.suv_max, rel=1e-6)
    assert pixel[0] > 150 and pixel[1] < 100 and pixel[2] < 100, pixel  # target 1's red drawn at the click
