"""The review app driven end to end in real headless Chromium (Debian's, through Playwright)."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time

import numpy as np
import pandas as pd
import uvicorn
from PIL import Image

from wildreid.app import create_app
from wildreid.catalog import Catalog

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Server:
    """The app on a free localhost port, in a thread, as ``wildreid serve`` runs it."""

    def __init__(self, folder):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(create_app(folder), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _not_blank(png: bytes) -> bool:
    return len(png) > 2000 and np.asarray(Image.open(io.BytesIO(png)).convert("L")).std() > 5


def test_review_workflow_in_chromium(real_subset, tmp_path):
    assert CHROMIUM, "Debian's chromium is needed (.ci/run installs it: apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    folder = tmp_path / "cat"
    catalog = Catalog.create(folder)
    catalog.add_dataset(real_subset)
    queries = pd.read_csv(real_subset / "metadata.csv", dtype=str).query("split == 'query'")
    one, two = queries.iloc[0], queries.iloc[-1]
    waiting = catalog.add_photo(two["path"], None, two["species"])  # picked in the page below
    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        with _Server(folder) as url:
            page.goto(url)
            page.wait_for_selector("#individuals li")
            page.set_input_files("#file", one["path"])
            page.fill("#species", one["species"])
            page.click("#send")
            page.wait_for_selector(".cand .confirm", timeout=60_000)
            page.click(".cand .show")  # local matches drawn with the animal outlined
            page.wait_for_selector("#matches img", timeout=120_000)
            (shots / "candidates.png").write_bytes(page.screenshot(full_page=True))
            confirmed = page.get_attribute(".cand .confirm", "data-name")
            page.click(".cand .confirm")
            page.wait_for_function("document.getElementById('status').textContent.includes('->')")
            page.click(f".pick[data-id='{waiting}']")
            page.wait_for_function(
                f"document.querySelector('#query img').src.endsWith('{waiting}')")
            page.wait_for_function("document.getElementById('status').textContent === ''")
            page.click("#new")
            page.wait_for_function("document.getElementById('status').textContent.includes('->')")
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
    assert decisions["kind"].tolist() == ["confirm", "new"]
    assert decisions["image_id"].iloc[0] in shown
    for shot in shots.iterdir():
        assert _not_blank(shot.read_bytes()), shot.name
