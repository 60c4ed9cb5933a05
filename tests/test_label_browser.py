"""`divalign label` in a real browser: headless Chromium driven through chromium-driver (Selenium). The server is a
real `divalign label` process; the test labels with clicks and keys, kills the server mid-session and restarts it,
and checks the preference file, the resume point and the summary page."""

import json
import os
import shutil
from pathlib import Path

import pytest
from label_server import Server, free_port

from divalign.data.preferences import read_pairs
from divalign.feedback.agreement import cohen_kappa

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="Debian's chromium and chromium-driver are not installed (CI installs them)")

HOSTILE = "<script>window.hacked = 1; alert('x')</script><b>bold?</b> & <img src=x onerror=alert(2)>"
PAIRS = [
    {"prompt": "Write one line about the sea.", "response_a": "The sea is wide and grey.", "response_b": HOSTILE,
     "model_a": "sft", "model_b": "base"},
    {"prompt": "Name a colour.", "response_a": "Blue.", "response_b": "A colour is a thing.", "model_a": "sft",
     "model_b": "base"},
    {"prompt": "Say something kind.", "response_a": "You did well today.", "response_b": "Go away.",
     "model_a": "sft", "model_b": "base"},
    {"prompt": "Count to three.", "response_a": "1, 2, 3.", "response_b": "3, 2, 1.", "model_a": "sft",
     "model_b": "base"},
    {"prompt": "What is 2 + 2?", "response_a": "4", "response_b": "5", "model_a": "sft", "model_b": "base"},
]


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _progress(driver, expected: str):
    WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "progress").text == expected)


def _shown(driver) -> tuple[str, str, str]:
    return tuple(driver.find_element(By.ID, name).text for name in ("prompt", "left", "right"))


def test_label_page_in_chromium_clicks_keys_kill_restart_and_summary(tmp_path, browser):
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    output = tmp_path / "prefs.jsonl"
    server = Server(pairs_file, output, free_port(), tmp_path / "server.log")
    shots = Path(os.environ.get("DIVALIGN_SCREENSHOTS", tmp_path))
    server.start()
    try:
        browser.get(server.url + "?annotator=alice")
        _progress(browser, "0 / 5 labelled")
        prompt, left, right = _shown(browser)
        assert prompt == PAIRS[0]["prompt"] and {left, right} == {PAIRS[0]["response_a"], HOSTILE}
        # the hostile text is shown as text: no element, no script, no alert
        assert browser.find_elements(By.CSS_SELECTOR, "#left b, #right b, #left img, #right img, #left script") == []
        assert browser.execute_script("return window.hacked === undefined")
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018
        browser.save_screenshot(str(shots / "label-page.png"))

        # 1) a click with a comment (HTML in it too)
        browser.find_element(By.ID, "comment").send_keys("<b>clearer</b>")
        browser.find_element(By.ID, "choose-left").click()
        _progress(browser, "1 / 5 labelled")
        first = _lines(output)[0]
        assert first["annotator"] == "alice" and first["comment"] == "<b>clearer</b>"
        assert first["choice"] == first["left"]  # "left" was clicked: the recorded shuffle maps it back to A or B
        assert first["chosen"] == left and first["rejected"] == right
        assert first["source"] == "human" and first["time"].endswith("+00:00")

        # 2) keys: right arrow, then 0 (tie)
        _, left2, right2 = _shown(browser)
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        _progress(browser, "2 / 5 labelled")
        second = _lines(output)[1]
        assert second["choice"] != second["left"] and second["chosen"] == right2 and second["rejected"] == left2
        browser.find_element(By.TAG_NAME, "body").send_keys("0")
        _progress(browser, "3 / 5 labelled")
        assert _lines(output)[2]["choice"] == "tie" and "chosen" not in _lines(output)[2]
        shown_before_kill = _shown(browser)

        # 3) the server dies mid-session; everything answered is on disk; a restart resumes at the next pair
        server.kill()
        assert len(_lines(output)) == 3
        server.start()
        browser.get(server.url + "?annotator=alice")
        _progress(browser, "3 / 5 labelled")
        assert _shown(browser) == shown_before_kill
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("3")  # both bad
        _progress(browser, "4 / 5 labelled")
        body.send_keys("1")
        _progress(browser, "5 / 5 labelled")
        assert browser.find_element(By.ID, "finished").is_displayed()
        alice = _lines(output)
        assert [r["pair_id"] for r in alice] == [json.loads(json.dumps(r))["pair_id"] for r in alice]
        assert len({r["pair_id"] for r in alice}) == 5 and [r["choice"] for r in alice][3] == "both_bad"

        # 4) a second annotator labels the same pairs (their own shuffle); both are kept
        browser.get(server.url + "?annotator=bob")
        _progress(browser, "0 / 5 labelled")
        for key in ("1", "1", "2", "0", "1"):
            done = int(browser.find_element(By.ID, "progress").text.split()[0])
            browser.find_element(By.TAG_NAME, "body").send_keys(key)
            _progress(browser, f"{done + 1} / 5 labelled")
        records = _lines(output)
        assert len(records) == 10 and {r["annotator"] for r in records} == {"alice", "bob"}

        # 5) the summary page: κ on the 5 shared pairs as computed here from the file, and the A/B win rate
        browser.get(server.url + "summary")
        WebDriverWait(browser, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#agreement tbody tr")) == 1)
        cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#agreement tbody td")]
        by = {name: {r["pair_id"]: r["choice"] for r in records if r["annotator"] == name} for name in ("alice", "bob")}
        ids = sorted(by["alice"])
        kappa = cohen_kappa([by["alice"][i] for i in ids], [by["bob"][i] for i in ids])
        assert cells[:2] == ["alice / bob", "5"]
        assert cells[3] == ("–" if kappa is None else f"{kappa:.3f}")
        win = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#winrate tbody td")]
        wins = sum(r["choice"] == "a" for r in records)
        ties = sum(r["choice"] in ("tie", "both_bad") for r in records)
        assert win[:3] == ["sft", "base", "people"] and win[3] == f"{(wins + ties / 2) / 10:.3f}"
        browser.save_screenshot(str(shots / "label-summary.png"))
    finally:
        server.stop()

    # the preference file is read as it is by the training commands: ties and "both bad" are left out
    decisive = [r for r in _lines(output) if r["choice"] in ("a", "b")]
    assert len(read_pairs(output)) == len(decisive) > 0
