"""`hfseg app` served on 127.0.0.1: called with gradio_client (the mask equals `hfseg predict`'s) and driven in
headless Chromium (upload, result, legend, screenshot), with every connection off this machine recorded."""

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, save_tiny_model
from PIL import Image

from hfseg.data.synthetic import SYNTHETIC_ID2LABEL

pytestmark = pytest.mark.slow

SAMPLE_IMAGE = SHARED_DATA / "voc2012/VOCdevkit/VOC2012/JPEGImages/2007_000063.jpg"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_local(host) -> bool:
    return host in (None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0")


@pytest.fixture(scope="module")
def outbound():
    """Every attempt of this process to resolve or reach a host off this machine, while the module runs (the app's
    threads included); the attempt fails."""
    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and not is_local(address[0]):
            attempts.append(address)
            raise OSError(f"network is off in this test ({address})")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not is_local(host.decode() if isinstance(host, bytes) else host):
            attempts.append(host)
            raise socket.gaierror(f"network is off in this test ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield attempts


@pytest.fixture(scope="module")
def app_url(outbound, tmp_path_factory):
    """`hfseg app` of a tiny random-init model (the synthetic classes), served on 127.0.0.1 by this process."""
    from hfseg.deploy.app import AppArguments, serve
    from hfseg.hub.card import build_model_card

    model = save_tiny_model(tmp_path_factory.mktemp("app_model"), SYNTHETIC_ID2LABEL)
    metrics = {"eval_mean_iou": 0.4321, "eval_mean_accuracy": 0.55, "eval_overall_accuracy": 0.875}
    build_model_card(metrics, SYNTHETIC_ID2LABEL, "app-model", config={"dataset_name": "synthetic"}).save(
        model / "README.md"
    )
    args = AppArguments(model=str(model), port=free_port(), examples=str(SAMPLE_IMAGE))
    demo = serve(args, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{args.port}/", model
    demo.close()
    assert outbound == [], f"the app reached for the network: {outbound}"


def predicted_mask(model: Path, image: Path, output: Path, *flags: str) -> np.ndarray:
    """The mask `hfseg predict` writes for `image`."""
    from hfseg.evaluation.predict import main as predict

    predict(["--model", str(model), "--input", str(image), "--output", str(output), *flags])
    return np.asarray(Image.open(output / f"{image.stem}.png"))


@pytest.mark.parametrize(
    ("mode", "flip", "flags"), [("whole", False, ()), ("slide", True, ("--eval_mode", "slide", "--eval_flip"))]
)
def test_served_mask_equals_hfseg_predict(app_url, outbound, tmp_path, mode, flip, flags):
    from gradio_client import Client, handle_file

    url, model = app_url
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    overlay_path, areas, mask_path = client.predict(
        handle_file(str(SAMPLE_IMAGE)), mode, flip, 0.5, api_name="/segment"
    )
    served = Image.open(mask_path)
    expected = predicted_mask(model, SAMPLE_IMAGE, tmp_path / "predict", *flags)
    assert served.mode == "P" and served.size == Image.open(SAMPLE_IMAGE).size
    np.testing.assert_array_equal(np.asarray(served), expected)
    assert Image.open(overlay_path).size == served.size
    rows = areas["data"]
    assert {row[0] for row in rows} == {SYNTHETIC_ID2LABEL[i] for i in np.unique(expected)}
    assert sum(row[1] for row in rows) == expected.size
    assert outbound == []


def test_written_space_serves_the_same_mask(app_url, outbound, tmp_path):
    """`hfseg app RUN --write_space DIR`, then DIR/app.py run as a Space runs it: the model copied into the folder
    answers as `hfseg predict` does."""
    import runpy

    from gradio_client import Client, handle_file

    from hfseg.deploy.app import main

    _, model = app_url
    space = tmp_path / "space"
    main([str(model), "--write_space", str(space), "--examples", str(SAMPLE_IMAGE)])
    demo = runpy.run_path(str(space / "app.py"), run_name="space_app")["demo"]
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        _, _, mask_path = client.predict(handle_file(str(SAMPLE_IMAGE)), "whole", False, 0.5, api_name="/segment")
    finally:
        demo.close()
    expected = predicted_mask(model, SAMPLE_IMAGE, tmp_path / "predict")
    np.testing.assert_array_equal(np.asarray(Image.open(mask_path)), expected)
    assert outbound == []


def test_a_port_in_use_is_named(app_url, capsys):
    from hfseg.deploy.app import main

    _, model = app_url
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main([str(model), "--port", str(port)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"--port {port}: cannot serve there" in error and "Traceback" not in error


def chromium_driver(download_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # Names other than 127.0.0.1 do not resolve, so a page that fetches from the Internet fails instead of hanging.
    offline = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
    arguments = (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1360,1500",
    )
    for argument in (*arguments, offline):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def requested_urls(driver) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs chromium + chromedriver (apt)")
def test_browser_upload_shows_overlay_areas_and_legend(app_url, outbound, tmp_path):
    """Upload, result, legend and card metrics; then the opacity slider at 1 turns the overlay into the solid class
    colours of `hfseg predict`'s mask."""
    import io
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from transformers import AutoConfig

    from hfseg.evaluation.predict import model_palette
    from hfseg.evaluation.visualize import colourise

    url, model = app_url
    driver = chromium_driver(tmp_path)
    try:
        driver.get(url)
        upload = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
        upload.send_keys(str(SAMPLE_IMAGE))
        areas = driver.find_element(By.ID, "hfseg-areas")
        WebDriverWait(driver, 120).until(lambda d: any(name in areas.text for name in SYNTHETIC_ID2LABEL.values()))
        WebDriverWait(driver, 60).until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#hfseg-overlay img")
                and d.find_element(By.CSS_SELECTOR, "#hfseg-overlay img").get_property("naturalWidth") > 0
            )
        )
        legend = driver.find_element(By.ID, "hfseg-legend").text
        assert all(name in legend for name in SYNTHETIC_ID2LABEL.values()), legend
        assert "index mask" in driver.find_element(By.ID, "hfseg-mask").text
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "mean_iou" in page and "0.4321" in page and "0.8750" in page
        screenshot = tmp_path / "app_screenshot.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("HFSEG_TEST_ARTIFACTS"):
            artifacts = Path(os.environ["HFSEG_TEST_ARTIFACTS"])
            artifacts.mkdir(parents=True, exist_ok=True)
            shutil.copy2(screenshot, artifacts / screenshot.name)
        assert Image.open(screenshot).size[0] > 1000

        palette = model_palette(AutoConfig.from_pretrained(model))
        solid = colourise(predicted_mask(model, SAMPLE_IMAGE, tmp_path / "predict"), palette)
        opacity = driver.find_element(By.CSS_SELECTOR, "#hfseg-opacity input[type=number]")
        opacity.clear()
        opacity.send_keys("1", Keys.ENTER)

        def shown_overlay(driver) -> np.ndarray:
            source = driver.find_element(By.CSS_SELECTOR, "#hfseg-overlay img").get_attribute("src")
            with urllib.request.urlopen(source) as response:
                return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))

        WebDriverWait(driver, 60).until(lambda d: np.array_equal(shown_overlay(d), solid))
    finally:
        driver.quit()
    assert outbound == []
