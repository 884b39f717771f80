"""`adapters demo`: the Gradio page, driven through gradio_client and through a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from loradex.registry.cli import cli

from .registry_helpers import random_shelf

gradio = pytest.importorskip("gradio", reason="the demo extra (loradex[demo]) is not installed")

DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo.png"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def shelf(tmp_path_factory):
    """A registry holding classification (v1, v2), detection and pose adapters on tiny-vit."""
    from loradex.registry.store.registry import Registry

    root = tmp_path_factory.mktemp("demo")
    home = random_shelf(root, [(name, task, {"seed": seed, "scale": 0.02}) for name, task, seed in (
        ("cls", "classification", 1), ("cls", "classification", 2), ("det", "detection", 3), ("pose", "pose", 4))],
        args={"data": "synthetic"})
    with Registry.open(home) as registry:
        registry.tag("cls@v1", "prod")
    from loradex.registry.demo import example_images

    pictures = {Path(path).name: path for path in example_images(root / "examples")}  # what the tasks offer
    return {"home": home, "scene": pictures["shapes-scene.png"], "figure": pictures["stick-figure.png"], "root": root}


@pytest.fixture(scope="module")
def served(shelf):
    """The page served in this process on a free port; yields (url, session)."""
    from loradex.registry.demo import DemoSession, build_app
    from loradex.registry.store.registry import Registry

    registry = Registry.open(shelf["home"])
    session = DemoSession(registry)
    app = build_app(session, refs=["cls@v1", "det", "pose"])
    app.queue(default_concurrency_limit=1)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True)
    try:
        yield f"http://127.0.0.1:{port}/", session
    finally:
        app.close()
        registry.close()


def test_predict_through_gradio_client_gives_every_task_and_a_drawing(served, shelf):
    from gradio_client import Client, handle_file
    from PIL import Image

    url, session = served
    client = Client(url, verbose=False)
    drawing, record = client.predict(handle_file(shelf["scene"]), ["cls@v1", "det@v1", "pose@v1"], "",
                                     api_name="/predict")
    assert list(record["predictions"]) == ["cls@v1", "det@v1", "pose@v1"]
    assert record["predictions"]["det@v1"]["task"] == "detection"
    assert record["base"]["name"] == "tiny-vit"
    with Image.open(drawing) as picture:
        assert picture.width >= 224  # the scene, enlarged for labels, with a legend band

    base = session.model.base
    _, switched = client.predict(handle_file(shelf["scene"]), ["cls@v2", "det@v1"], "", api_name="/predict")
    assert list(switched["predictions"]) == ["cls@v2", "det@v1"]
    assert session.model.base is base and session.loads == 1  # a version switch reuses the loaded base


def test_the_side_panel_shows_versions_aliases_metrics_and_lineage(served):
    from gradio_client import Client

    url, _ = served
    panel = Client(url, verbose=False).predict(["cls@prod"], api_name="/describe")
    assert "### cls@v1 — classification" in panel
    assert "versions: v1, v2" in panel and "prod → cls@v1" in panel and "lineage" in panel


def test_bad_input_shows_loradex_line_and_the_server_keeps_serving(served, shelf, capfd):
    """Issue 22.15: a non-image or bomb upload showed Gradio's generic "could not preprocess" error,
    and the terminal printed a traceback for every page error; now each is loradex's line, naming
    the uploaded file, on the page and once in the terminal."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from .bad_input_corpus import _png_header

    url, _ = served
    client = Client(url, verbose=False)
    broken = shelf["root"] / "broken.png"
    broken.write_bytes(b"this is not a png")
    notes = shelf["root"] / "notes.txt"
    notes.write_text("hello")
    bomb = _png_header(shelf["root"] / "bomb.png", 30_000, 30_000)
    capfd.readouterr()
    bad = [((broken, ["cls@v1"], ""), r"^broken\.png: not a readable image \(no known image format\)$"),
           ((notes, ["cls@v1"], ""), r"^notes\.txt: not a readable image"),
           ((bomb, ["cls@v1"], ""), r"^bomb\.png: (30000x30000 is 900,000,000 pixels, more than the limit of "
                                    r"40,000,000|refused as a decompression bomb)"),
           ((shelf["scene"], [], ""), "choose at least one adapter"),
           ((shelf["scene"], ["nope"], ""), "no adapter named 'nope'"),
           ((shelf["scene"], ["cls@v1"], "the red circle"), "takes a text prompt")]
    for (image, adapters, text), message in bad:
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(image), adapters, text, api_name="/predict")
    _, record = client.predict(handle_file(shelf["figure"]), ["pose"], "", api_name="/predict")
    assert list(record["predictions"]) == ["pose@v1"]
    terminal = capfd.readouterr().err
    assert "Traceback" not in terminal, terminal
    assert len([line for line in terminal.splitlines() if line.startswith("demo: ")]) == len(bad), terminal


def test_the_demo_command_binds_locally_and_refuses_a_wrong_ref(shelf, monkeypatch):
    from loradex.registry import demo

    seen = {}
    monkeypatch.setattr(demo, "build_app", lambda session, refs=(): seen.setdefault("app", _Recorder(seen)))
    result = CliRunner().invoke(cli, ["--home", str(shelf["home"]), "demo", "cls,det"])
    assert result.exit_code == 0, result.output
    assert seen["launch"]["server_name"] == "127.0.0.1" and seen["launch"]["share"] is False
    wrong = CliRunner().invoke(cli, ["--home", str(shelf["home"]), "demo", "cls,nope"])
    assert wrong.exit_code != 0 and "no adapter named 'nope'" in wrong.stderr


class _Recorder:
    """Stands in for the Gradio app in the CLI test: records how it would be launched."""

    def __init__(self, seen: dict) -> None:
        self.seen = seen

    def queue(self, **kwargs):
        return self

    def launch(self, **kwargs):
        self.seen["launch"] = kwargs


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        message = "needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("LORADEX_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1500,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_a_real_browser_uploads_an_image_and_sees_all_three_tasks(served, shelf, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    browser = _browser()
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 120)
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        upload.send_keys(str(shelf["scene"]))
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#image img")))
        browser.find_element(By.CSS_SELECTOR, "#run").click()
        wait.until(ready.text_to_be_present_in_element((By.CSS_SELECTOR, "#predictions"), "pose@v1"))
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#drawing img")))
        text = browser.find_element(By.CSS_SELECTOR, "#predictions").text
        assert "cls@v1" in text and "det@v1" in text and "pose@v1" in text
        shot = tmp_path / "demo.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("LORADEX_UPDATE_SCREENSHOT"):
            shutil.copyfile(shot, DOCS_SCREENSHOT)
    finally:
        browser.quit()
