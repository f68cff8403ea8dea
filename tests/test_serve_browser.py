"""End to end: a real uvicorn server and the web page in headless Chromium (Debian's, driven
by Selenium through the system chromedriver). Skips where any of the three is missing."""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="serving needs fastapi (pip install 'lstmgen[serve]')")
pytest.importorskip("uvicorn", reason="serving needs uvicorn (pip install 'lstmgen[serve]')")
pytest.importorskip("selenium", reason="the browser test needs selenium (pip install selenium)")

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
if not CHROMEDRIVER.is_file() or CHROMIUM is None:
    pytest.skip("needs Debian's chromium and chromedriver "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)

import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import lstmgen  # noqa: E402
from lstmgen.serve import _bind, create_app  # noqa: E402

pytestmark = pytest.mark.timeout(150)
WAIT_S = 30


def corpus():
    words = "to be or not to be that is the question whether tis nobler".split()
    for chunk in range(30):
        yield "".join(" ".join(words[(i + k) % len(words)] for k in range(7)) + ".\n"
                      for i in range(chunk * 60, (chunk + 1) * 60))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A uvicorn server on a free 127.0.0.1 port, in a thread; stopped at the end."""
    out = tmp_path_factory.mktemp("browser") / "run"
    model = lstmgen.train(corpus(), out=out, model=lstmgen.ModelConfig(units=32, embedding_dim=16),
                          max_steps=20, batch_size=16, seq_len=32, sample_length=0, verbose=0)
    app = create_app(model, max_length=1000, max_batch=4, max_samples=4)
    # A tiny model writes 400 characters in a millisecond; pace its blocks so the browser
    # visibly receives the text in pieces.
    generator = model.generator
    stream = generator.stream

    def paced(*args, **kwargs):
        text = stream(*args, **kwargs)
        blocks = text._blocks

        def slowly():
            for block in blocks:
                time.sleep(0.05)
                yield block

        text._blocks = slowly()
        return text

    generator.stream = paced
    sock = _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(WAIT_S)
    sock.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, server):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


def wait_for(driver, condition, message):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition, message)


def status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def test_type_a_prompt_and_watch_text_stream_in(server, browser, tmp_path):
    browser.get(server + "/")
    wait_for(browser, lambda d: "parameters" in d.find_element(By.ID, "summary").text,
             "the model's description never loaded")
    assert browser.find_element(By.ID, "length").get_attribute("max") == "1000"

    prime = browser.find_element(By.ID, "prime")
    prime.send_keys("to be or")
    seed = browser.find_element(By.ID, "seed")
    seed.send_keys("11")
    # Record how the output grows, to see the text arrive in pieces rather than at once.
    browser.execute_script("""
        window.sizes = [];
        new MutationObserver(() => window.sizes.push(
            document.getElementById('out-text').textContent.length))
          .observe(document.getElementById('output'),
                   {subtree: true, childList: true, characterData: true});
    """)
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, lambda d: status(d).startswith(("Done", "Error")), "generation never ended")
    assert status(browser).startswith("Done: 400 characters"), status(browser)
    assert browser.find_element(By.ID, "out-prime").text == "to be or"
    text = browser.find_element(By.ID, "out-text").get_attribute("textContent")
    assert len(text) == 400
    sizes = [s for s in browser.execute_script("return window.sizes") if s]
    assert len(set(sizes)) >= 3, sizes  # 400 tokens in blocks of 64 arrive as several events
    shot = tmp_path / "serve_page.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 0

    # Keyboard only: Ctrl+Enter in the prompt generates again; the same seed, the same text.
    prime.click()
    prime.send_keys(Keys.CONTROL, Keys.ENTER)
    wait_for(browser, lambda d: d.find_element(By.ID, "out-text").get_attribute("textContent")
             == text and status(d).startswith("Done"), "Ctrl+Enter did not regenerate")


def test_stop_sequence_and_repetition_penalty_from_the_page(server, browser):
    browser.get(server + "/")
    wait_for(browser, lambda d: "parameters" in d.find_element(By.ID, "summary").text,
             "the model's description never loaded")
    browser.find_element(By.ID, "prime").send_keys("to be or")
    browser.find_element(By.ID, "seed").send_keys("11")
    browser.find_element(By.ID, "stop_at").send_keys("e")
    penalty = browser.find_element(By.ID, "repetition_penalty")
    browser.execute_script("arguments[0].value = '1.5'; "
                           "arguments[0].dispatchEvent(new Event('input'))", penalty)
    assert browser.find_element(By.ID, "repetition_penalty-value").text == "1.50"
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, lambda d: status(d).startswith(("Done", "Error")), "generation never ended")
    assert "ended at the stop sequence" in status(browser), status(browser)
    text = browser.find_element(By.ID, "out-text").get_attribute("textContent")
    assert "e" not in text and len(text) < 400


def test_a_refused_request_shows_the_servers_message(server, browser):
    browser.get(server + "/")
    wait_for(browser, lambda d: "parameters" in d.find_element(By.ID, "summary").text,
             "the model's description never loaded")
    browser.find_element(By.ID, "seed").send_keys("-5")
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, lambda d: status(d).startswith("Error"), "no error shown")
    assert "seed" in status(browser)
