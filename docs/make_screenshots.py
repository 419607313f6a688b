"""Screenshots of the review app for the README, made from the built-in synthetic demo data (never
from real benchmark photos): ``python docs/make_screenshots.py`` writes ``docs/review-app.png``
(the queue) and ``docs/review-individual.png`` (an individual's sightings).
Needs Debian's Chromium (``apt-get install chromium``) and Playwright (the test extra)."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import LiveServer
from wildreid.catalog import Catalog
from wildreid.demo import make_demo_dataset


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    out = Path(__file__).parent / "review-app.png"
    individual = Path(__file__).parent / "review-individual.png"
    with tempfile.TemporaryDirectory() as scratch:
        data = make_demo_dataset(Path(scratch) / "demo", 6, 3, 4, 2, seed=0)
        catalog = Catalog.create(Path(scratch) / "catalog")
        catalog.add_dataset(data)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as playwright, LiveServer(catalog.folder) as url:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                 args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(url)
            expect(page.locator(".cand .confirm").first).to_be_visible(timeout=120_000)
            page.keyboard.press("1")  # one decision made, so the progress shows it
            expect(page.locator("#status")).to_contain_text("->")
            expect(page.locator("#verdict")).to_contain_text(
                re.compile("likely|new individual"), timeout=120_000)
            page.wait_for_load_state("networkidle")  # the photos drawn
            page.screenshot(path=str(out))
            # An individual's page: its sightings, one with a location and a note written.
            page.locator("#individuals li").first.click()
            expect(page.locator(".sighting").first).to_be_visible()
            sighting = page.locator(".sighting").first
            sighting.locator("input").fill("north waterhole, camera 3")
            sighting.locator("textarea").fill("scar above the left eye")
            sighting.locator("button").click()
            expect(page.locator("#status")).to_contain_text("saved")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(individual))
            browser.close()
    print(f"wrote {out} and {individual}")


if __name__ == "__main__":
    main()
