"""The review app driven end to end in real headless Chromium (Debian's, through Playwright), with
names and ids that would run script if they reached HTML unescaped. Waits go through Playwright's
locators, since the page's Content-Security-Policy forbids the eval that wait_for_function uses."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import LiveServer as _Server
from wildreid.catalog import Catalog


def _chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing (as root, or with sudo without a
    password), so the README's test command needs no other step."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("apt-get") and (not prefix or shutil.which("sudo")):
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq",
                                                      "chromium"]):
            subprocess.run([*prefix, *command], check=False, capture_output=True, timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("the browser test drives Debian's Chromium and could not install it: run "
                    "'sudo apt-get install chromium' (or put chromium on PATH)")
    return found


def _not_blank(png: bytes) -> bool:
    return len(png) > 2000 and np.asarray(Image.open(io.BytesIO(png)).convert("L")).std() > 5


def test_review_workflow_in_chromium(real_subset, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "cat"
    catalog = Catalog.create(folder)
    catalog.add_dataset(real_subset)
    queries = pd.read_csv(real_subset / "metadata.csv", dtype=str).query("split == 'query'")
    one, two = queries.iloc[0], queries.iloc[-1]
    waiting = catalog.add_photo(two["path"], None, two["species"])  # picked in the page below
    # Stored XSS attempts: names and ids that run script if they ever reach HTML unescaped.
    hostile_name = '<img src=x onerror="window.pwned=1">lion'
    hostile_id = '"><img src=y onerror="window.pwned=2">'
    other = queries[queries["species"] != one["species"]].iloc[0]  # not among one's candidates
    hostile = catalog.add_photo(other["path"], None, other["species"], image_id=hostile_id)
    catalog.new_individual(hostile, hostile_name)
    catalog.add_photo(two["path"], None, two["species"], image_id="<script>window.pwned=3</script>")
    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        with _Server(folder) as url:
            page.goto(url)
            page.wait_for_selector("#individuals li")
            page.wait_for_selector(".pick")
            assert hostile_name + " (1)" in page.eval_on_selector_all(
                "#individuals li", "els => els.map(e => e.textContent)")  # shown as text
            page.click(f"#individuals li[data-name='{hostile_name}']")
            page.wait_for_selector("#browse img")
            assert page.get_attribute("#browse img", "alt") == hostile_id
            assert page.evaluate("window.pwned") is None
            assert page.locator("img[src='x'], img[src='y'], #waiting script").count() == 0
            page.set_input_files("#file", one["path"])
            page.fill("#species", one["species"])
            page.click("#send")
            page.wait_for_selector(".cand .confirm", timeout=60_000)
            page.click(".cand .show")  # local matches drawn with the animal outlined
            page.wait_for_selector("#matches img", timeout=120_000)
            (shots / "candidates.png").write_bytes(page.screenshot(full_page=True))
            confirmed = page.get_attribute(".cand .confirm", "data-name")
            page.click(".cand .confirm")
            assert page.evaluate("window.pwned") is None
            expect(page.locator("#status")).to_contain_text("->")
            page.click(f".pick[data-id='{waiting}']")
            expect(page.locator("#query img")).to_have_attribute("src", f"/photo?image_id={waiting}")
            expect(page.locator("#status")).to_have_text("")
            page.click("#new")
            expect(page.locator("#status")).to_contain_text("->")
            created = page.text_content("#status").split("-> ")[1]
            (shots / "decided.png").write_bytes(page.screenshot(full_page=True))
        with _Server(folder) as url:  # restarted: both decisions must be there
            page.goto(url)
            page.wait_for_selector(f"#individuals li[data-name='{created}']")
            assert page.text_content(f"#individuals li[data-name='{created}']").endswith("(1)")
            page.click(f"#individuals li[data-name='{confirmed}']")
            page.wait_for_selector("#browse img")
            shown = page.eval_on_selector_all("#browse img", "els => els.map(e => e.alt)")
            (shots / "restarted.png").write_bytes(page.screenshot(full_page=True))
        browser.close()
    decisions = Catalog(folder).decisions()
    assert decisions["kind"].tolist() == ["new", "confirm", "new"]  # the hostile one, then ours
    assert decisions["image_id"].iloc[1] in shown
    for shot in shots.iterdir():
        assert _not_blank(shot.read_bytes()), shot.name
