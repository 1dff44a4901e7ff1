"""The web page in a real browser: headless Chromium driven over the DevTools protocol (CDP).

A module fixture serves ``serving.build_app(...)`` (micro model, 60 synthetic scenes as PNG files in
a Milvus Lite .db) on a free port; another launches Chromium with remote debugging and talks to the
page over its websocket. The tests type a query, upload an image through the file input, open a
``?q=`` link, re-rank with fusion, and check what a user sees: result cards, loaded thumbnails,
scores (fine, coarse, fusion), stage timings.
Screenshots land in ``tests/artifacts/`` (gitignored).

The micro model is untrained, so relevance is checked where it is exact: a caption shown as a
"captions" search finds itself first, an uploaded image finds itself first among the images.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from milvus_server import free_port

pytestmark = [pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
    "--remote-debugging-port=0",
]
N_RECORDS = 60
LIMIT = 12


@dataclass
class Site:
    url: str
    records: list[Any]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[Site]:
    if CHROMIUM is None:  # before the ~40 s of Ray start-up
        pytest.skip("chromium is not installed (`command -v chromium` finds nothing): apt-get install chromium")
    from milvus_lite.server_manager import server_manager_instance
    from model_helpers import micro_fusion_model
    from ray import serve

    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.data import load_source, synthetic
    from hivlp_milvus.ingest import ingest
    from serving import AppArgs, build_app

    tmp = tmp_path_factory.mktemp("web")
    synthetic.write_splits(tmp / "data", {"test": N_RECORDS}, seed=5, progress=False)
    records = list(load_source(tmp / "data" / "test"))
    # With a fusion block, so the app has its FusionScorer and the page's fusion control works.
    model = micro_fusion_model([c for r in records for c in r.captions])
    model.save_pretrained(tmp / "model")
    db = str(tmp / "hivlp.db")
    col = HierarchicalCollection.create("web", uri=db, model=model)
    assert ingest(records, collection=col, model=model, progress=False).rows_written == N_RECORDS * 6
    col.client.close()
    server_manager_instance.release_server(db)  # Milvus Lite is single-process: the Searcher takes over

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args = AppArgs(checkpoint=str(tmp / "model"), milvus_uri=db, collection="web", max_encoder_replicas=1)
        serve.run(build_app(args), name="web", route_prefix="/")
        yield Site(url=f"http://127.0.0.1:{port}", records=records)
    finally:
        serve.shutdown()  # Ray itself belongs to the session (tests/conftest.py)


class Page:
    """A minimal CDP client for one page target (commands in, results out, events ignored)."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=None, open_timeout=30)
        self._id = 0

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._id += 1
        mid = self._id
        self._ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("id") == mid:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.js("document.body && document.body.dataset.state")
                status = self.js("document.getElementById('status') && document.getElementById('status').textContent")
                raise AssertionError(f"timed out waiting for {expression!r} (state={state!r}, status={status!r})")
            time.sleep(0.2)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('results')")

    def type_and_enter(self, selector: str, text: str) -> None:
        self.js(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)}); el.value = ''; el.focus(); }})()"
        )
        self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13, text="\r"
            )

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        import base64

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._ws.close()


@pytest.fixture(scope="module")
def page(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        p = Page(ws_url)
        p.send("Page.enable")
        p.send("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        yield p
        p.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


_CARDS = "document.querySelectorAll('#results figure.hit').length"
_THUMBS_LOADED = (
    "(() => { const imgs = [...document.querySelectorAll('#results figure.hit img')];"
    " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); })()"
)


def _set_modality(page: Page, value: str) -> None:
    page.js(f"document.getElementById('modality').value = {json.dumps(value)}")


def _wait_done(page: Page) -> None:
    page.wait_for("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'")
    assert page.js("document.body.dataset.state") == "done", page.js("document.getElementById('status').textContent")


def test_typed_query_shows_a_grid_of_thumbnails_with_scores_and_timings(site: Site, page: Page) -> None:
    page.goto(site.url + "/")
    assert page.js("document.title") == "hivlp-milvus search"
    page.type_and_enter("#q", "a small red circle on a striped background")
    _wait_done(page)
    assert page.js(_CARDS) == LIMIT
    page.wait_for(_THUMBS_LOADED, timeout=30)
    scores = page.js("[...document.querySelectorAll('#results .score')].map(e => parseFloat(e.textContent))")
    assert len(scores) == LIMIT
    assert scores == sorted(scores, reverse=True)
    chips = page.js("[...document.querySelectorAll('#timings .chip')].map(e => e.textContent)")
    assert [c.split()[0] for c in chips[:5]] == ["encode", "coarse", "fine", "search", "total"]
    assert page.js("location.search").startswith("?q=")  # the search can be linked
    page.screenshot(ARTIFACTS / "web_text_search.png")


def test_typed_caption_finds_itself_among_captions(site: Site, page: Page) -> None:
    caption = site.records[2].captions[0]
    page.goto(site.url + "/")
    _set_modality(page, "text")
    page.type_and_enter("#q", caption)
    _wait_done(page)
    assert page.js("document.querySelector('#results figure.hit blockquote').textContent") == caption


def test_uploaded_image_finds_itself(site: Site, page: Page) -> None:
    record = site.records[7]
    page.goto(site.url + "/")
    _set_modality(page, "image")
    root = page.send("DOM.getDocument")["root"]["nodeId"]
    node = page.send("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    page.send("DOM.setFileInputFiles", nodeId=node, files=[str(record.image)])  # fires `change`
    _wait_done(page)
    assert page.js("document.querySelector('#results figure.hit').dataset.key") == record.id
    assert page.js("!document.getElementById('query-preview').hidden")
    page.wait_for(_THUMBS_LOADED, timeout=30)
    first = page.js("parseFloat(document.querySelector('#results .score').textContent)")
    assert first > 0.999
    shot = page.screenshot(ARTIFACTS / "web_image_search.png")
    assert shot.stat().st_size > 10_000


def test_a_link_with_q_runs_the_search(site: Site, page: Page) -> None:
    caption = site.records[4].captions[1]
    page.goto(f"{site.url}/?q={quote(caption)}&modality=text&limit=5")
    _wait_done(page)
    assert page.js(_CARDS) == 5
    assert page.js("document.querySelector('#results figure.hit blockquote').textContent") == caption


def test_fusion_control_reranks_and_shows_the_fusion_score(site: Site, page: Page) -> None:
    query = "a small red circle on a striped background"
    page.goto(site.url + "/")
    page.js("document.getElementById('fusion').value = '30'")
    page.type_and_enter("#q", query)
    _wait_done(page)
    assert page.js(_CARDS) == LIMIT
    assert "fusion=30" in page.js("location.search")  # the re-ranked search can be linked too
    shown = page.js(
        "[...document.querySelectorAll('#results figure.hit')].map(f => [f.dataset.id,"
        " f.querySelector('.fusion-score').textContent.trim()])"
    )
    # What the page shows is what the API answers for the same search (the order is the fusion
    # stage's: tests/unit/test_serving_inprocess.py checks it against model.score_pairs).
    with httpx.Client(base_url=site.url, timeout=60) as client:
        api = client.post("/search", json={"text": query, "limit": LIMIT, "fusion_limit": 30}).json()
    assert [i for i, _ in shown] == [h["id"] for h in api["hits"]]
    assert [t for _, t in shown] == [f"fusion {h['fusion_score']:.3f}" for h in api["hits"]]
    fused = [h["fusion_score"] for h in api["hits"]]
    assert fused == sorted(fused, reverse=True)  # every image file is readable: all scored, in order
    chips = page.js("[...document.querySelectorAll('#timings .chip')].map(e => e.textContent)")
    assert [c.split()[0] for c in chips[:6]] == ["encode", "coarse", "fine", "search", "fusion", "total"]
    assert "re-ranked with fusion" in page.js("document.getElementById('status').textContent")
    page.screenshot(ARTIFACTS / "web_fusion_search.png")
    page.js("document.getElementById('fusion').value = ''")  # the other tests search without it


def test_server_errors_are_shown_not_swallowed(site: Site, page: Page) -> None:
    page.goto(site.url + "/")
    page.js("searchText('x'.repeat(1001))")  # over the API's 1000-character limit
    page.wait_for("document.body.dataset.state === 'error'")
    status = page.js("document.getElementById('status').textContent")
    assert "422" in status
    assert "1000 characters" in status


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__]))
