"""``shine-jax serve`` on the fixture run: its HTTP API answers three ways and zips the adapter, its errors are one
line each, and the page works in a real headless Chromium driven through ChromeDriver (W3C WebDriver over HTTP)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zipfile

import pytest

from shine_jax.serve import Session, make_server
from shine_jax.shine import Shine

pytestmark = pytest.mark.slow
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def document(trained_workdir):
    from shine_jax.data.tfds_builder import load_split
    from shine_jax.train.loop import corpus_overrides
    from tests.train_utils import small_config

    ds = load_split(trained_workdir / "data" / "tfds", "test", config="mqa",
                    **corpus_overrides(small_config("ift_mqa")))
    return ds[0]["context"], ds[0]["qa"][0]["question"]


@pytest.fixture(scope="module")
def served(trained_workdir):
    session = Session(Shine.load(trained_workdir), max_new_tokens=6)
    server = make_server(session, port=0, max_upload_bytes=LIMIT, log=lambda line: None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", session
    server.shutdown()
    server.server_close()


def request(url: str, body=None, raw: bytes | None = None):
    """(status, parsed JSON or raw bytes) of a GET, or of a POST of ``body`` as JSON (or of ``raw`` bytes)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            payload, status, kind = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        payload, status, kind = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(payload) if kind.startswith("application/json") else payload


def test_the_api_makes_an_adapter_answers_three_ways_and_zips_it(served, document):
    base, session = served
    text, question = document
    status, made = request(f"{base}/api/adapter", {"document": text})
    assert status == 200 and made["seconds"] > 0 and made["tokens"] > 0, made
    assert "truncated" in made["warning"]  # the fixture's documents are longer than its evidence length
    messages = [{"role": "user", "content": question}]
    status, answers = request(f"{base}/api/chat", {"adapter": made["id"], "messages": messages})
    assert status == 200 and set(answers) == {"shine", "none", "icl"}, answers
    shine = session.shine
    assert answers["shine"]["answer"] == shine.chat(shine.adapter(text), messages, 6)
    assert answers["none"]["answer"] == shine.chat(None, messages, 6)
    icl = [{"role": "user", "content": f"{text}\n\nQuestion: {question}"}]
    assert answers["icl"]["answer"] == shine.chat(None, icl, 6)
    # a second turn on the same cached adapter
    messages += [{"role": "assistant", "content": answers["shine"]["answer"]}, {"role": "user", "content": question}]
    status, again = request(f"{base}/api/chat", {"adapter": made["id"], "messages": messages, "methods": ["shine"]})
    assert status == 200 and set(again) == {"shine"}

    status, payload = request(f"{base}/api/adapter/{made['id']}.zip?scale=0.5")
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        names = set(zf.namelist())
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                "adapter/shine_provenance.json"} <= names, names
        assert json.loads(zf.read("adapter/shine_provenance.json"))["adapter_scale"] == 0.5


@pytest.mark.parametrize("path,body,status,words", [
    ("/api/adapter", {"document": "  "}, 400, "the document is empty"),
    ("/api/chat", {"adapter": "nope", "messages": [{"role": "user", "content": "q"}]}, 400, "no adapter 'nope'"),
    ("/api/adapter", {"document": "x" * (LIMIT + 1)}, 413, "the upload is 65,553 bytes, more than the limit of 65,536"),
    ("/api/adapter", b"{not json", 400, "not UTF-8 JSON"),
    ("/api/adapter", b"[1, 2]", 400, "must be a JSON object, got list"),
    ("/api/chat", {"adapter": "x", "messages": [{"role": "user", "content": "q"}], "methods": ["nope"]}, 400,
     "methods must be a list of shine, none, icl"),
    ("/api/nothing", {}, 404, "no endpoint /api/nothing"),
])
def test_bad_requests_are_one_line_errors(served, path, body, status, words):
    base, _ = served
    got, reply = request(base + path, raw=body) if isinstance(body, bytes) else request(base + path, body)
    assert got == status and words in reply["error"] and "\n" not in reply["error"], reply


def test_a_scale_out_of_range_is_refused(served, document):
    base, _ = served
    _, made = request(f"{base}/api/adapter", {"document": document[0]})
    status, reply = request(f"{base}/api/chat", {"adapter": made["id"], "scale": 9,
                                                 "messages": [{"role": "user", "content": "q"}]})
    assert status == 400 and "scale must be between 0 and 4" in reply["error"]


# ------------------------------------------------------------------------------------------------ the browser
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element reference


class Browser:
    """A headless Chromium session through ChromeDriver's W3C endpoints (no client library needed)."""

    def __init__(self, driver_url: str, profile: str):
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": shutil.which("chromium"), "args": args}}}}
        self.url = driver_url
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method: str, path: str, body=None):
        req = urllib.request.Request(self.url + path, method=method, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read()[:500]!r}") from None

    def s(self, method: str, path: str, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def find(self, css: str) -> str:
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def text(self, css: str) -> str:
        return self.s("GET", f"/element/{self.find(css)}/text")

    def type(self, css: str, text: str) -> None:
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.s("POST", f"/element/{self.find(css)}/click")

    def wait_for(self, condition, what: str, timeout: float = 120.0):
        end = time.time() + timeout
        while time.time() < end:
            try:
                value = condition()
            except AssertionError:  # not there yet
                value = None
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        self.call("DELETE", f"/session/{self.session}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup --test installs them when it runs "
                    "as root with apt)")
    port = _free_port()
    driver = subprocess.Popen([shutil.which("chromedriver"), f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/status", timeout=5) as r:
                    if json.loads(r.read())["value"]["ready"]:
                        break
            except OSError:
                pass
            if time.time() > end:
                raise AssertionError("chromedriver did not start")
            time.sleep(0.2)
        b = Browser(url, str(tmp_path_factory.mktemp("chromium-profile")))
        yield b
        b.close()
    finally:
        driver.terminate()
        driver.wait(timeout=30)


def test_the_page_in_a_headless_browser(served, browser, document):
    """Load the page, paste a document, generate its adapter, ask a question: the three answers shown are the
    API's; then a document over the upload limit shows the server's error on the page."""
    base, session = served
    text, question = document
    browser.s("POST", "/url", {"url": base + "/"})
    assert "shine-jax" in browser.s("GET", "/title")
    browser.s("POST", "/execute/sync", {"script": "document.getElementById('document').value = arguments[0];",
                                        "args": [text]})
    browser.click("#generate")
    status = browser.wait_for(lambda: "generated in" in browser.text("#adapter-status")
                              and browser.text("#adapter-status"), "the adapter")
    assert "truncated" in status  # the warning the server returned is shown
    browser.type("#question", question)
    browser.click("#ask")
    browser.wait_for(lambda: browser.find("#turn-0"), "the answers")
    shown = {m: browser.text(f'#turn-0 [data-method="{m}"]') for m in ("shine", "none", "icl")}
    messages = [{"role": "user", "content": question}]
    shine = session.shine
    # the page shows text as the browser renders it: runs of whitespace as one space, trimmed
    assert shown["shine"] == " ".join(shine.chat(shine.adapter(text), messages, 6).split())
    assert shown["none"] == " ".join(shine.chat(None, messages, 6).split())
    assert browser.s("GET", f"/element/{browser.find('#download')}/attribute/href").endswith(".zip?scale=1")

    browser.s("POST", "/execute/sync", {"script": "document.getElementById('document').value = 'x'.repeat("
                                                  "arguments[0]);", "args": [LIMIT + 10]})
    browser.click("#generate")
    error = browser.wait_for(lambda: "more than the limit" in browser.text("#adapter-status")
                             and browser.text("#adapter-status"), "the upload error")
    assert "bytes, more than the limit of 65,536" in error
