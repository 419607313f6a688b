"""The review app driven end to end in real headless Chromium (Debian's, through Playwright): the
queue walked with the keyboard (confirm, new individual, undo, move), the local matches, an
individual's page, a merge and its undo, the export — with names and ids that would run script if
they reached HTML unescaped. Waits go through Playwright's locators, since the page's
Content-Security-Policy forbids the eval that wait_for_function uses. Screenshots are kept in
``$WILDREID_TEST_ARTIFACTS/browser`` (else the test's temporary folder)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import LiveServer as _Server
from wildreid.catalog import Catalog

#: Drives Chromium: pytest -m 'not browser' leaves these out.
# On one worker of a parallel run: Chromium is installed, when missing, once.
pytestmark = [pytest.mark.browser, pytest.mark.bench, pytest.mark.xdist_group("browser")]


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


def _ranked(url: str) -> None:
    """Wait for the app's own work, not for a clock: the server is asked, without a time limit,
    for the candidates of a waiting photo (fitting the catalog's model, the slow part on a loaded
    machine), so the page's own request that follows is answered by the fitted model."""
    waiting = httpx.get(url + "api/queries", timeout=None).json()["queries"]
    if waiting:
        httpx.get(url + "api/candidates", params={"image_id": waiting[0]},
                  timeout=None).raise_for_status()


def _not_blank(png: bytes) -> bool:
    return len(png) > 2000 and np.asarray(Image.open(io.BytesIO(png)).convert("L")).std() > 5


@pytest.mark.slow
def test_review_queue_in_chromium(real_subset, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "cat"
    catalog = Catalog.create(folder)
    imported = catalog.add_dataset(real_subset)  # the dataset's queries wait for review
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    queries = metadata[metadata["split"] == "query"]
    assert imported.waiting == len(queries)
    # Stored XSS attempts: names and ids that run script if they ever reach HTML unescaped.
    hostile_name = '<img src=x onerror="window.pwned=1">lion'
    hostile_id = '"><img src=y onerror="window.pwned=2">'
    lion = metadata[(metadata["split"] == "database") & (metadata["species"] == "lion")]
    catalog.new_individual(catalog.add_photo(lion["path"].iloc[0], None, "lion",
                                             image_id=hostile_id), hostile_name)
    catalog.add_photo(lion["path"].iloc[1], None, "lion",
                      image_id="<script>window.pwned=3</script>")
    slashed = "lion / 7 b"  # an individual page reached by a name with a slash and spaces
    catalog.new_individual(catalog.add_photo(lion["path"].iloc[2], None, "lion"), slashed)
    done, total = catalog.reviewed(), catalog.reviewed() + len(catalog.unassigned())
    shots = Path(os.environ.get("WILDREID_TEST_ARTIFACTS", tmp_path)) / "browser"
    shots.mkdir(parents=True, exist_ok=True)

    def shoot(page, name: str) -> None:
        (shots / f"{name}.png").write_bytes(page.screenshot(full_page=True))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        with _Server(folder) as url:
            page.goto(url)
            expect(page.locator("#individuals li").filter(has_text=hostile_name)).to_have_text(
                hostile_name + " (1)")  # shown as text
            expect(page.locator("#progress")).to_have_text(f"{done} of {total} reviewed")
            _ranked(url)
            expect(page.locator(".cand .confirm").first).to_be_visible(timeout=60_000)
            expect(page.locator("#verdict")).to_contain_text(re.compile("likely|new individual"))
            assert page.evaluate("window.pwned") is None
            assert page.locator("img[src='x'], img[src='y'], script:not([src])").count() == 0
            shoot(page, "1-queue")

            first = page.text_content("#query-id")
            chosen = page.get_attribute(".cand .confirm >> nth=0", "data-name")
            page.keyboard.press("1")  # confirm the first candidate
            expect(page.locator("#status")).to_have_text(f"{first} -> {chosen}")
            expect(page.locator("#progress")).to_have_text(f"{done + 1} of {total} reviewed")
            expect(page.locator("#query-id")).not_to_have_text(first)
            _ranked(url)
            expect(page.locator(".cand .confirm").first).to_be_visible(timeout=60_000)
            second = page.text_content("#query-id")
            page.keyboard.press("n")  # a new individual
            expect(page.locator("#status")).to_contain_text(f"{second} -> ")
            created = page.text_content("#status").split(" -> ")[1]
            expect(page.locator("#progress")).to_have_text(f"{done + 2} of {total} reviewed")
            expect(page.locator("#individuals li").filter(has_text=created)).to_have_count(1)
            page.keyboard.press("u")  # undo the new individual: the photo waits again
            expect(page.locator("#status")).to_have_text(f"undone: {second} -> {created}")
            expect(page.locator("#progress")).to_have_text(f"{done + 1} of {total} reviewed")
            expect(page.locator("#individuals li").filter(has_text=created)).to_have_count(0)
            expect(page.locator("#query-id")).to_have_text(second)
            expect(page.locator("#position")).to_have_text(re.compile(r"^1 / "))
            page.keyboard.press("ArrowRight")
            expect(page.locator("#position")).to_have_text(re.compile(r"^2 / "))
            page.keyboard.press("ArrowLeft")
            expect(page.locator("#position")).to_have_text(re.compile(r"^1 / "))

            expect(page.locator(".cand .show").first).to_be_visible(timeout=60_000)
            page.click(".cand .show >> nth=0")  # local matches, drawn on the animal
            expect(page.locator("#matches .viewer-frame")).to_be_visible(timeout=120_000)
            expect(page.locator("#matches figcaption")).to_contain_text(
                re.compile(r"^\d+ keypoint matches \(strength [\d.]+\)"))
            expect(page.locator("#matches figcaption")).to_contain_text("gave the score")
            # The viewer draws each match itself: a dot at both ends, coloured by confidence.
            matched = int(re.match(r"\d+", page.inner_text("#matches figcaption")).group())
            expect(page.locator("#matches .dots circle")).to_have_count(2 * matched)
            shoot(page, "2-matches")
            page.click("#matches button[title='zoom in']")  # both photos zoom together
            expect(page.locator("#matches .zoom-level")).to_have_text("150 %")
            # And by keyboard: the focused viewer zooms with + and pans with the arrows,
            # which then do not move in the queue.
            shown_before = page.inner_text("#query-id")
            page.focus("#matches .viewer-frame")
            page.keyboard.press("+")
            expect(page.locator("#matches .zoom-level")).to_have_text("225 %")
            before = page.eval_on_selector("#matches .stage", "node => node.style.transform")
            page.keyboard.press("ArrowRight")
            assert page.eval_on_selector("#matches .stage",
                                         "node => node.style.transform") != before
            assert page.inner_text("#query-id") == shown_before
            page.uncheck("#show-lines")
            expect(page.locator("#matches .lines")).to_be_hidden()
            if not page.locator("#matches button[title=\"the candidate's next photo\"]").is_disabled():
                page.click("#matches button[title=\"the candidate's next photo\"]")
                # The candidate's next photo, matched on request (the first time: keypoints).
                expect(page.locator("#matches figcaption")).to_contain_text(
                    re.compile(r"right: \S+, a photo of "), timeout=120_000)

            page.locator("#individuals li").filter(has_text=slashed).click()
            expect(page.locator("#individual-name")).to_have_text(slashed)
            expect(page.locator("#individual-facts")).to_contain_text("1 photo ·")
            page.locator("#individuals li").filter(has_text=re.compile(
                "^" + re.escape(chosen) + r" \(")).click()  # the individual's own page
            expect(page.locator("#individual-name")).to_have_text(chosen)
            expect(page.locator("#individual-facts")).to_contain_text("photos")
            assert page.url.endswith("#individual=" + chosen.replace("/", "%2F"))
            # Each photo is a sighting: its id, its date or none, and a location and notes the
            # team writes (saved, logged, shown back as text even when it is markup).
            sighting = page.locator(".sighting").first
            expect(sighting.locator(".facts")).to_contain_text(re.compile(r"date unknown|\d{4}"))
            written = "<img src=x onerror=window.pwned=1> waterhole 3"
            sighting.locator("input").fill(written)
            sighting.locator("button").click()
            expect(page.locator("#status")).to_contain_text("saved the location and notes")
            page.reload()
            expect(page.locator(".sighting").first.locator("input")).to_have_value(written)
            target = page.get_attribute("#merge-target option >> nth=0", "value")
            shoot(page, "3-individual")
            page.click("#merge")
            expect(page.locator("#status")).to_contain_text(f"merged {chosen} into {target}")
            expect(page.locator("#individual-name")).to_have_text(target)
            expect(page.locator("#individuals li").filter(has_text=re.compile(
                "^" + re.escape(chosen) + r" \("))).to_have_count(0)
            page.click("#home")
            expect(page.locator("#review")).to_be_visible()
            page.keyboard.press("u")  # undo the merge
            expect(page.locator("#status")).to_have_text(f"undone: the merge into {target}")
            expect(page.locator("#individuals li").filter(has_text=re.compile(
                "^" + re.escape(chosen) + r" \("))).to_have_count(1)

            with page.expect_download() as download:
                page.click("#export")
            exported = pd.read_csv(download.value.path(), dtype=str)
            assert set(exported["split"]) == {"database", "query"}
            assert exported.loc[exported["image_id"] == first, "identity"].item() == chosen
            assert page.evaluate("window.pwned") is None
            shoot(page, "4-after")
        with _Server(folder) as url:  # restarted: the decisions are kept
            page.goto(url)
            expect(page.locator("#progress")).to_have_text(f"{done + 1} of {total} reviewed")
        page.set_viewport_size({"width": 820, "height": 1180})  # a tablet, upright
        with _Server(folder) as url:
            page.goto(url)
            _ranked(url)
            expect(page.locator(".cand .confirm").first).to_be_visible(timeout=60_000)
            shoot(page, "5-tablet")
        browser.close()
    kinds = Catalog(folder).decisions()[["kind", "undone"]].values.tolist()
    assert kinds == [["new", 0], ["new", 0], ["confirm", 0], ["new", 1], ["undo", 0],
                     ["describe", 0], ["merge", 1], ["undo", 0]]
    for shot in shots.iterdir():
        assert _not_blank(shot.read_bytes()), shot.name


@pytest.mark.slow
def test_a_proposed_group_is_accepted_in_chromium(bursts, tmp_path):
    """The waiting bursts of unseen lions proposed as groups; one, less a photo left out and with
    a photo moved in from another group, accepted as one new individual with one click, and
    undone with one key."""
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    folder = tmp_path / "cat"
    Catalog.create(folder).add_dataset(bursts)
    shots = Path(os.environ.get("WILDREID_TEST_ARTIFACTS", tmp_path)) / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        with _Server(folder) as url:
            page.goto(url)
            _ranked(url)
            expect(page.locator(".cand .confirm").first).to_be_visible(timeout=60_000)
            page.click(".groups-box summary")
            httpx.get(url + "api/groups", timeout=None).raise_for_status()  # the app's work
            page.click("#find-groups")
            expect(page.locator(".group").first).to_be_visible(timeout=120_000)
            assert page.locator(".group").count() >= 2
            first_group = page.locator(".group >> nth=0")
            expect(first_group.locator("img")).to_have_count(4)
            first_group.locator(".group-name").fill("Burst lion")
            # One photo left out before accepting: a group is a proposal.
            left_out = first_group.locator("input[type=checkbox] >> nth=3")
            dropped = left_out.get_attribute("value")
            left_out.uncheck()
            expect(first_group.locator(".accept-group")).to_contain_text("(3 photos)")
            # And one photo of the second group moved into the first.
            second_group = page.locator(".group >> nth=1")
            second_before = second_group.locator(".member-box").count()
            moved = second_group.locator("input[type=checkbox] >> nth=0").get_attribute("value")
            second_group.locator(".move-to >> nth=0").select_option("0")
            expect(first_group.locator("img")).to_have_count(5)
            expect(second_group.locator(".member-box")).to_have_count(second_before - 1)
            expect(first_group.locator(".accept-group")).to_contain_text("(4 photos)")
            expect(first_group.locator(".title")).to_contain_text("5 photos")
            (shots / "6-groups.png").write_bytes(page.screenshot(full_page=True))
            first_group.locator(".accept-group").click()
            expect(page.locator("#status")).to_have_text("4 photos -> Burst lion")
            expect(page.locator("#individuals li").filter(has_text="Burst lion")).to_have_text(
                "Burst lion (4)")
            members = httpx.get(url + "api/individual", params={"name": "Burst lion"}).json()
            assert moved in members["photos"] and dropped not in members["photos"]
            assert dropped in httpx.get(url + "api/queries").json()["queries"]  # still waits
            expect(page.locator("#progress")).to_have_text(re.compile(r"^4 of \d+ reviewed"))
            # Keys go to the page, not the name field. (Clicking the page's centre could land on
            # a candidate's confirm button and decide something else.)
            page.evaluate("document.activeElement.blur()")
            page.keyboard.press("u")
            expect(page.locator("#status")).to_have_text(
                "undone: the new individual Burst lion (a group)")
            expect(page.locator("#individuals li").filter(has_text="Burst lion")).to_have_count(0)
        browser.close()
    assert _not_blank((shots / "6-groups.png").read_bytes())
