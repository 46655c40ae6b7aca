"""Make docs/viewer.png: the viewer on the phantom demo after one click on its hottest lesion.

    python docs/viewer_screenshot.py [--checkpoint model.pt] [-o docs/viewer.png]

Needs Debian's chromium and Playwright (the test extra); the model is the shipped one unless given.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from seganypet.demo import click_inside
from seganypet.modeling import load_model
from seganypet.phantom import PhantomConfig, generate_case
from seganypet.web import create_app, serve_in_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("viewer.png"))
    args = parser.parse_args()

    case = generate_case(0, PhantomConfig(max_lesions=6))  # what the page's "Phantom demo" opens
    lesion = max(case.lesions, key=lambda item: case.image.array[case.instances == item.id].mean())
    target_mm = case.image.voxel_to_world(click_inside(case.instances == lesion.id), "RAS")[0].tolist()
    base, server = serve_in_thread(create_app(load_model(args.checkpoint)))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            page.goto(base + "/")
            page.click("#open-phantom")
            page.wait_for_function("document.body.dataset.sid !== undefined", timeout=120_000)
            page.select_option("#layout", "axial")
            x, y = page.evaluate("(mm) => canvasPositionOf(mm)", target_mm)
            page.mouse.click(x, y)
            page.wait_for_function("document.body.dataset.prompts === '1'", timeout=60_000)
            page.select_option("#layout", "multi")
            page.wait_for_timeout(500)
            page.screenshot(path=str(args.output))
            print(f"{lesion.site} lesion, {lesion.diameter_mm:.0f} mm: {page.text_content('#status')}; wrote {args.output}")
            browser.close()
    finally:
        server.should_exit = True


if __name__ == "__main__":
    main()
