"""Several characters per panel (`serving.characters`, `cameo inpaint --character`), a saved
panel traced back with `cameo lineage`, and the studio: its handlers on plain values, then the
real page (`cameo studio` against a real scoring server) in headless Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import requests
from click.testing import CliRunner
from conftest import FAST, ONE_THREAD
from playwright.sync_api import expect

from orchestration.cli.main import main
from perception.priors import Priors
from serving.characters import (
    Character,
    NotAPanel,
    final_identity,
    in_process,
    paint_characters,
    panel_model_uris,
    read_panel_metadata,
    save_panel,
)
from serving.client import ServingError, demo_inputs
from serving.params import ServingParams
from serving.server import ModelServer, free_port, wait_until_answering
from serving.studio import (
    FIXED_PARAMS,
    Session,
    Studio,
    StudioActions,
    StudioError,
    error_line,
)
from tests.conftest import REPO, SCREENSHOTS, needs_chromium


@pytest.fixture(scope="module")
def analyzer():
    return Priors("tiny").face_analyzer()


@pytest.fixture(scope="module")
def painter(logged):
    paint, about = in_process(f"models:/cameo-inpaint/{logged.registered_model_version}")
    assert about["model_version"] == f"cameo-inpaint/{logged.registered_model_version}"
    assert about["profile"] == "tiny" and about["params"]["seed"]["default"] == 0
    return paint


def masks(size: tuple[int, int]) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A left and a right region of a panel of `size`, overlapping in the middle."""
    width, height = size
    left, right = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    left[4:-4, : width * 3 // 5] = 255
    right[4:-4, width * 2 // 5 :] = 255
    return PIL.Image.fromarray(left), PIL.Image.fromarray(right)


def test_characters_paint_in_order_on_the_previous_result(painter, analyzer, scene, tmp_path):
    base, _, reference, _ = scene
    left, right = masks(base.size)
    prompts = []

    def paint(rows, params):
        prompts.append(rows[0]["prompt"])
        return painter(rows, params)

    first = Character(left, reference, "a knight waves", params={**FAST, "seed": 1})
    second = Character(right, reference, "a witch laughs", params={**FAST, "seed": 2})
    panel = paint_characters(base, [first, second], paint, analyzer)
    assert prompts == ["a knight waves", "a witch laughs"]
    assert panel.painted_on(1) is panel.characters[0].result.image
    assert panel.characters[0].covered_by == [2] and panel.characters[1].covered_by == []
    assert "character 2 painted over part of its region" in panel.identity_lines()[0]

    # Re-running the second character repaints only it, on the first's kept result.
    again = replace(second, params={**FAST, "seed": 3})
    kept = [panel.characters[0].result]
    rerun = paint_characters(base, [first, again], paint, analyzer, kept=kept)
    assert prompts[2:] == ["a witch laughs"]
    assert rerun.characters[0].result is kept[0]
    assert not np.array_equal(np.asarray(rerun.image), np.asarray(panel.image))

    saved = save_panel(rerun, tmp_path / "panel.png")
    made = read_panel_metadata(saved)["characters"]
    assert [c["prompt"] for c in made] == ["a knight waves", "a witch laughs"]
    assert [c["params"]["seed"] for c in made] == [1, 3]
    assert panel_model_uris(saved) == [f"models:/{made[0]['model_version']}"]
    assert np.array_equal(np.asarray(PIL.Image.open(saved)), np.asarray(rerun.image))
    base.save(tmp_path / "plain.png")
    with pytest.raises(NotAPanel, match="no `cameo` text chunk"):
        read_panel_metadata(tmp_path / "plain.png")


def test_identity_is_scored_where_the_mask_is_on_the_final_panel(analyzer):
    """The reference itself where the character was painted scores 1; the same region covered
    by something else finds no face."""
    _, _, reference, _ = demo_inputs()
    everywhere = PIL.Image.new("L", reference.size, 255)
    character = Character(everywhere, reference, "an astronaut")
    assert final_identity(analyzer, character, reference) == pytest.approx(1.0, abs=1e-5)
    covered = PIL.Image.new("RGB", reference.size, "grey")
    assert final_identity(analyzer, character, covered) is None
    faceless = replace(character, reference=covered)
    assert final_identity(analyzer, faceless, reference) is None


def test_inpaint_paints_several_characters_and_lineage_reads_the_panel(
    server, logged, scene, tmp_path
):
    base, _, reference, _ = scene
    left, right = masks(base.size)
    for name, image in (("base", base), ("left", left), ("right", right), ("ref", reference)):
        image.save(tmp_path / f"{name}.png")
    out = tmp_path / "panel.png"
    args = [
        "inpaint",
        "--base",
        tmp_path / "base.png",
        "--url",
        server.url,
        "--steps",
        2,
        "--character",
        tmp_path / "left.png",
        tmp_path / "ref.png",
        "a knight waves",
        "--character",
        tmp_path / "right.png",
        tmp_path / "ref.png",
        "a witch laughs",
        "--out",
        out,
        "--grid",
        tmp_path / "grid.png",
    ]
    painted = CliRunner().invoke(main, [str(a) for a in args])
    assert painted.exit_code == 0, painted.output
    assert "2 character(s)" in painted.output and "character 2: " in painted.output
    assert PIL.Image.open(tmp_path / "grid.png").height > 2 * base.height  # a row each
    made = read_panel_metadata(out)["characters"]
    assert [c["prompt"] for c in made] == ["a knight waves", "a witch laughs"]

    traced = CliRunner().invoke(main, ["lineage", str(out)])
    version = logged.registered_model_version
    assert f"painted by models:/cameo-inpaint/{version}" in traced.output
    assert f"cameo-inpaint version {version}" in traced.output, traced.output
    not_a_panel = CliRunner().invoke(main, ["lineage", str(tmp_path / "base.png")])
    assert not_a_panel.exit_code == 1 and "not painted by cameo" in not_a_panel.output

    half = CliRunner().invoke(
        main,
        ["inpaint", "--base", str(tmp_path / "base.png"), "--mask", str(tmp_path / "left.png")],
    )
    assert half.exit_code == 2 and "--mask, --reference and --prompt go together" in half.output


def test_studio_handlers_say_what_is_wrong_in_one_line(painter, analyzer, scene, tmp_path):
    base, _, reference, _ = scene
    studio = Studio(painter, "in this process", "cameo-inpaint/1", {}, Priors("tiny"), tmp_path)
    actions = StudioActions(studio)
    (tmp_path / "notes.txt").write_text("not a picture")
    reference.save(tmp_path / "ref.png")
    editor = {"background": base, "layers": [], "composite": base}

    def refused(*args) -> str:
        with pytest.raises(StudioError) as caught:
            actions.add_character(Session(), *args, "", {})
        return str(caught.value)

    assert "Upload a panel first" in refused(None, None, str(tmp_path / "ref.png"), "a knight")
    assert "No region to paint" in refused(editor, None, str(tmp_path / "ref.png"), "a knight")
    notes = str(tmp_path / "notes.txt")
    assert "The reference is not an image" in refused(editor, str(tmp_path / "ref.png"), notes, "x")
    assert "notes.txt" in refused(editor, str(tmp_path / "ref.png"), notes, "x")
    assert "prompt" in refused(editor, str(tmp_path / "ref.png"), str(tmp_path / "ref.png"), " ")

    assert error_line(ServingError(503, "2 requests wait", 4), "u") == (
        "The server is busy (HTTP 503): 2 requests wait. Try again in 4 s."
    )
    assert "(HTTP 400): params.seed" in error_line(ServingError(400, "params.seed: below"), "u")
    assert "took too long (HTTP 504)" in error_line(ServingError(504, "timed out"), "u")
    gone = error_line(requests.ConnectionError("refused"), "http://127.0.0.1:9")
    assert gone.startswith("No server answers at http://127.0.0.1:9")


def test_studio_handlers_add_rerun_reorder_and_remove(painter, analyzer, scene, tmp_path):
    """The handlers the page's buttons call, with the model in this process."""
    base, _, reference, _ = scene
    left, right = masks(base.size)
    left.save(tmp_path / "left.png")
    right.save(tmp_path / "right.png")
    reference.save(tmp_path / "ref.png")
    studio = Studio(
        painter, "in this process", "v", {"seed": {"default": 0}}, Priors("tiny"), tmp_path
    )
    actions = StudioActions(studio)
    ref = str(tmp_path / "ref.png")

    def add(session: Session, mask: str, prompt: str, seed: int):
        image = session.image or base
        editor = {"background": image, "layers": [], "composite": image}
        settings = {"seed": seed, "num_inference_steps": None}
        return actions.add_character(session, editor, mask, ref, prompt, "", settings)

    session, panel = add(Session(), str(tmp_path / "left.png"), "a knight", 1)
    session, panel = add(session, str(tmp_path / "right.png"), "a witch", 2)
    assert [c.character.prompt for c in panel.characters] == ["a knight", "a witch"]
    assert panel.characters[0].character.params == {"seed": 1, **FIXED_PARAMS}
    downloaded = read_panel_metadata(actions.saved(panel))["characters"]
    assert [c["prompt"] for c in downloaded] == ["a knight", "a witch"]

    session, panel = actions.rerun(session, 2, {"seed": 5})
    assert panel.characters[1].character.params["seed"] == 5
    session, panel = actions.move_up(session, 2)
    assert [c.prompt for c in session.characters] == ["a witch", "a knight"]
    with pytest.raises(StudioError, match="already painted first"):
        actions.move_up(session, 1)
    session, panel = actions.remove(session, 1)
    assert [c.prompt for c in session.characters] == ["a knight"]
    with pytest.raises(StudioError, match="between 1 and 1"):
        actions.rerun(session, 3, {})
    session, panel = actions.remove(session, 1)
    assert panel is None and session.characters == [] and session.image is session.base
    # A new panel in the editor starts a new session.
    other = PIL.Image.new("RGB", base.size, "white")
    editor = {"background": other, "layers": [], "composite": other}
    fresh, _ = actions.add_character(
        session, editor, str(tmp_path / "left.png"), ref, "a cat", "", {}
    )
    assert [c.prompt for c in fresh.characters] == ["a cat"]


def upload(page, element: str, path: Path) -> None:
    """Upload `path` in the file box `element`, clearing the file it holds first."""
    clear = page.locator(f"#{element} button[aria-label='Clear']")
    if clear.count():
        clear.dispatch_event("click")
    page.locator(f"#{element} input[type=file]").set_input_files(path)


def until_shown(act: Callable[[], None], shown: Callable[[float], None], tries: int = 4) -> None:
    """Do `act` again while `shown` (an expectation, given its timeout in ms) fails: on a busy
    machine a component can take its first event before it is wired and drop it (full suites'
    screenshots showed a slider's default kept, and a panel upload the image editor never
    took)."""
    for _ in range(tries - 1):
        act()
        try:
            shown(10_000)
            return
        except AssertionError:
            continue
    act()
    shown(60_000)


def set_slider(page, element: str, value: int) -> None:
    """Set a slider as a drag sets it (its range input's input and change events) until its
    number box shows the value."""
    slider = page.locator(f"#{element} input[type=range]")
    shown = page.locator(f"#{element} input[type=number]")
    slider.wait_for(state="visible")
    until_shown(
        lambda: slider.fill(str(value)),
        lambda timeout: expect(shown).to_have_value(str(value), timeout=timeout),
    )


@pytest.mark.slow
@needs_chromium
# A real browser on a busy machine: in about one full suite in ten a page event was dropped
# despite the waits (the slider's value, then the panel upload; both are now set again until
# shown). One rerun, reported in the summary; a page that is broken fails both runs.
@pytest.mark.flaky(reruns=1)
def test_the_studio_page_paints_two_characters_in_a_browser(logged, browser, tmp_path):
    """`cameo studio` against its own scoring server: upload a panel and a reference, brush a
    stroke, paint; a second character from an uploaded mask; a text file as a reference; then
    the server stops and the page says so and stays usable."""
    base, _, reference, _ = demo_inputs(256, 160)
    _, right = masks(base.size)
    files = {"base": base, "ref": reference, "right": right}
    for name, image in files.items():
        image.save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    base_file = tmp_path / "base.png"
    settings = ServingParams(timeout_s=120)
    version = f"models:/cameo-inpaint/{logged.registered_model_version}"
    with ModelServer(version, settings=settings, env=ONE_THREAD) as endpoint:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "orchestration.cli.main",
            "studio",
            "--endpoint",
            endpoint.url,
            "--port",
            str(port),
        ]
        log = tmp_path / "studio.log"
        studio = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **ONE_THREAD},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_answering("cameo studio", url, studio, 120, log)
            page.set_default_timeout(60_000)  # a busy machine: the other worker trains
            expect.set_options(timeout=60_000)
            page.goto(url)
            page.locator("#paint").wait_for()  # the app is built from its config, then mounted
            # Brushing before the editor holds the panel would paint an empty canvas.
            until_shown(
                lambda: page.locator("#panel input[type=file]").set_input_files(base_file),
                lambda timeout: expect(page.locator("#panel")).not_to_contain_text(
                    "Upload an image", timeout=timeout
                ),
            )
            page.locator("#panel button[aria-label='Brush']").first.click()
            box = page.locator("#panel canvas").first.bounding_box()
            x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3
            page.mouse.move(x, y)
            page.mouse.down()
            for k in range(10):
                page.mouse.move(x + 4 * k, y + 8 * k)
            page.mouse.up()
            upload(page, "reference", tmp_path / "ref.png")
            page.locator("#face-note").get_by_text("Face found").wait_for()
            page.locator("#prompt textarea").fill("a knight waves")
            page.get_by_text("Settings (the model's defaults)").click()
            set_slider(page, "num_inference_steps", FAST["num_inference_steps"])
            page.locator("#paint").click()
            summary = page.locator("#summary")
            summary.get_by_text("character 1: ").wait_for(timeout=120_000)
            assert f"Model {version.removeprefix('models:/')}" in summary.inner_text()
            expect(page.locator("#characters")).to_contain_text("a knight waves")

            upload(page, "mask", tmp_path / "right.png")
            page.locator("#prompt textarea").fill("a witch laughs")
            page.locator("#paint").click()
            summary.get_by_text("character 2: ").wait_for(timeout=120_000)
            expect(page.locator("#characters")).to_contain_text("a witch laughs")
            link = page.locator("#download a").first.get_attribute("href")
            downloaded = tmp_path / "downloaded.png"
            downloaded.write_bytes(requests.get(link if "://" in link else url + link).content)
            made = read_panel_metadata(downloaded)["characters"]
            assert [c["prompt"] for c in made] == ["a knight waves", "a witch laughs"]
            assert PIL.Image.open(downloaded).size == base.size  # painted at the panel's size
            assert made[0]["params"]["num_inference_steps"] == FAST["num_inference_steps"]
            assert made[0]["model_version"] == version.removeprefix("models:/")
            if SCREENSHOTS:
                page.screenshot(path=Path(SCREENSHOTS) / "studio.png", full_page=True)

            # Not an image by its name: Gradio's page refuses it; by its bytes: cameo does.
            upload(page, "reference", tmp_path / "notes.txt")
            page.get_by_text("Invalid file type: notes.txt").wait_for()
            (tmp_path / "notes.png").write_text("not a picture either")
            upload(page, "reference", tmp_path / "notes.png")
            page.locator("#face-note").get_by_text("is not an image Pillow can read").wait_for()

            endpoint.stop()
            page.locator("#number input").fill("1")
            page.locator("#rerun").click()
            page.locator("#status").get_by_text("No server answers at").wait_for(timeout=60_000)
            expect(page.locator("#characters")).to_contain_text("a witch laughs")  # kept
        except Exception as e:
            # What the page and the studio said when a step failed, in the test's report.
            page.screenshot(path=tmp_path / "failed.png", full_page=True)
            said = page.locator("body").inner_text()[-1500:]
            raise AssertionError(
                f"{e}\n--- page ({tmp_path / 'failed.png'}) ---\n{said}\n"
                f"--- studio.log ---\n{log.read_text()[-3000:]}"
            ) from e
        finally:
            studio.terminate()
            studio.wait(timeout=30)
