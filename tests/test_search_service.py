"""`cmimh serve`: the API contract (each endpoint, bad parameters, oversized uploads: a 4xx and one
line, never a traceback), batch = single, the same hits as `cmimh search`, and the page in a real
headless browser (skipped, with the reason, where Chromium is not installed)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from pipeline.search.index import load_index, search  # noqa: E402
from pipeline.search.service import Service, create_app  # noqa: E402
from test_search_index import run  # noqa: E402,F401  (the module's index fixture: 40-pair demo, tag texts)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def client(run):  # noqa: F811
    d, f, _ = run
    service = Service({"demo": load_index(d / "index")}, max_upload=64 << 10)
    with TestClient(create_app(service)) as c:
        yield c
    service.close()


def _one_line_error(r, status: int, needle: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"], body
    assert needle in body["error"], body


def test_healthz_and_indexes(client):
    assert client.get("/healthz").json() == {"status": "ok", "indexes": ["demo"]}
    ix = client.get("/api/indexes").json()
    assert ix["default"] == "demo" and ix["indexes"][0]["items"] == 32 and ix["indexes"][0]["bits"] == 12
    assert ix["indexes"][0]["captions"] and ix["indexes"][0]["images"] and ix["indexes"][0]["text_queries"]


def test_text_search_hits_can_be_shown(client, run, tiny_demo):  # noqa: F811
    d, _, _ = run
    r = client.get("/api/search", params={"text": "a red ball and a star", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"hits", "ms"} and body["ms"] >= 0
    want = search(load_index(d / "index"), text="a red ball and a star", k=5)
    assert [{k: h[k] for k in ("rank", "id", "distance", "target", "caption")} for h in body["hits"]] == \
        [{k: h[k] for k in ("rank", "id", "distance", "target", "caption")} for h in want]
    for h in body["hits"]:
        assert set(h) == {"rank", "id", "distance", "target", "caption", "image"} and h["target"] == "image"
        img = client.get(h["image"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        assert img.content == (tiny_demo.parent / "images" / f"{h['id']}.jpg").read_bytes()
    r = client.get("/api/search", params={"text": "ball", "k": 3, "target": "text", "index": "demo"})
    assert [h["target"] for h in r.json()["hits"]] == ["text"] * 3
    r = client.post("/api/search", json={"text": "a red ball and a star", "k": 5})
    assert r.json()["hits"] == body["hits"]


def test_image_upload_multipart_and_raw(client, run, tiny_demo):  # noqa: F811
    d, f, _ = run
    path = tiny_demo.parent / "images" / f"{f.ids[f.database[0]]}.jpg"
    want = search(load_index(d / "index"), image=str(path), k=4)
    r = client.post("/api/search", params={"k": 4}, files={"image": ("q.jpg", path.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert [(h["id"], h["distance"], h["target"]) for h in r.json()["hits"]] == \
        [(h["id"], h["distance"], h["target"]) for h in want]
    raw = client.post("/api/search?k=4", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.json()["hits"] == r.json()["hits"]


def test_batch_equals_single(client):
    texts = ["a red ball and a star", "blue square", "star", "a green triangle"]
    r = client.post("/api/search/batch", json={"texts": texts, "k": 6})
    assert r.status_code == 200 and len(r.json()["results"]) == 4
    for t, res in zip(texts, r.json()["results"]):
        assert res["hits"] == client.get("/api/search", params={"text": t, "k": 6}).json()["hits"]


@pytest.mark.parametrize("params, status, needle", [
    ({"text": "ball", "k": 0}, 400, "k must be"), ({"text": "ball", "k": "abc"}, 400, "k must be"),
    ({"text": "ball", "k": 5000}, 400, "k must be"), ({"text": "ball", "k": "2.5"}, 400, "k must be"),
    ({"text": "ball", "target": "audio"}, 400, "target must be"), ({"text": "ball", "index": "nope"}, 404, "unknown index"),
    ({"text": "   "}, 400, "empty"), ({}, 400, "give text"), ({"text": "x" * 5000}, 400, "longer than"),
    ({"text": "zzzz qqqq"}, 400, "none of the query's words"),
])
def test_bad_parameters_are_one_line_4xx(client, params, status, needle):
    _one_line_error(client.get("/api/search", params=params), status, needle)


def test_bad_bodies_and_uploads_are_one_line_4xx(client):
    _one_line_error(client.post("/api/search", files={"image": ("x.jpg", b"not an image", "image/jpeg")}), 400,
                    "unreadable image")
    _one_line_error(client.post("/api/search", content=b"", headers={"content-type": "image/png"}), 400, "empty")
    big = os.urandom(100 << 10)  # over the fixture's 64 KiB limit
    _one_line_error(client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")}), 413, "larger")
    _one_line_error(client.post("/api/search", content=big, headers={"content-type": "image/jpeg"}), 413, "larger")

    def chunks():  # no Content-Length: refused while streaming
        for _ in range(10):
            yield os.urandom(16 << 10)

    _one_line_error(client.post("/api/search", content=chunks(), headers={"content-type": "image/jpeg"}), 413)
    _one_line_error(client.post("/api/search", content=b"hello", headers={"content-type": "text/plain"}), 415)
    _one_line_error(client.post("/api/search", content=b"{bad", headers={"content-type": "application/json"}), 400,
                    "not valid JSON")
    _one_line_error(client.post("/api/search/batch", json={"texts": []}), 400, "non-empty list")
    _one_line_error(client.post("/api/search/batch", json={"texts": ["ball"] * 1001}), 413, "at most")
    _one_line_error(client.post("/api/search/batch", json={"texts": ["ball", 3]}), 400, "texts[1]")
    _one_line_error(client.post("/api/search/batch", json=["ball"]), 400, "JSON body must be")
    _one_line_error(client.get("/media/nope"), 404, "no item")
    _one_line_error(client.get("/nowhere"), 404)
    _one_line_error(client.delete("/api/search"), 405)


def test_encoder_workers_share_the_waiting_queries(run, monkeypatch):  # noqa: F811
    """Several encoder threads per index: each takes its share of the queries waiting, so a burst
    is encoded on more than one thread, and every query gets exactly its own answer."""
    import threading
    import time

    from pipeline.search import service as svc

    d, _, _ = run
    ix = load_index(d / "index")
    seen: list[tuple[str, int]] = []
    real = svc.Worker._run

    def slow_run(self, jobs, features, encode):
        seen.append((threading.current_thread().name, len(jobs)))
        time.sleep(0.05)  # a slow encoder: the burst queues up behind it
        real(self, jobs, features, encode)

    monkeypatch.setattr(svc.Worker, "_run", slow_run)
    w = svc.Worker(ix, workers=3)
    texts = [f"a red ball and {i} stars" for i in range(12)]
    futures = [w.submit("text", [t], 5, "image") for t in texts]
    results = [f.result(timeout=30)[0] for f in futures]
    w.close()
    for t, hits in zip(texts, results):
        want = search(ix, text=t, k=5)
        assert [(h["id"], h["distance"]) for h in hits] == [(h["id"], h["distance"]) for h in want]
    assert sum(n for _, n in seen) == 12 and len({name for name, _ in seen}) >= 2, seen
    with pytest.raises(svc.PipelineError, match="--workers must be >= 1"):
        svc.Worker(ix, workers=0)


def test_one_bad_text_among_concurrent_queries_fails_alone(client):
    from concurrent.futures import ThreadPoolExecutor

    qs = ["ball", "zzzz qqqq", "star", "a red ball"] * 4
    with ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda t: client.get("/api/search", params={"text": t, "k": 3}), qs))
    assert [r.status_code for r in rs] == [200, 400, 200, 200] * 4


# ----------------------------------------------------------------------------- a real server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run):  # noqa: F811
    """`cmimh serve` in a subprocess on a free loopback port."""
    import httpx

    d, _, _ = run
    port = _free_port()
    cmimh = str(Path(sys.executable).parent / "cmimh")
    proc = subprocess.Popen([cmimh, "serve", str(d / "index"), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"cmimh serve exited: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("cmimh serve did not come up")
    yield url, d
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_served_hits_equal_cmimh_search(server):
    import httpx

    url, d = server
    cmimh = str(Path(sys.executable).parent / "cmimh")
    for text in ("a red ball and a star", "blue square"):
        got = httpx.get(url + "/api/search", params={"text": text, "k": 8}, timeout=60).json()["hits"]
        p = subprocess.run([cmimh, "search", str(d / "index"), "--text", text, "-k", "8"], capture_output=True,
                           text=True)
        want = [json.loads(x) for x in p.stdout.splitlines()]
        keys = ("rank", "id", "distance", "target", "caption")
        assert [{k: h[k] for k in keys} for h in got] == [{k: h[k] for k in keys} for h in want]
    p = subprocess.run([cmimh, "serve", str(d / "index"), "--port", url.rsplit(":", 1)[1]], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "cannot listen" in p.stderr and "Traceback" not in p.stderr


def test_page_in_a_headless_browser(server, tmp_path):
    """The page: type a query, press Search, see a grid of thumbnails with captions and distances;
    upload an image, see its hits. Screenshots go to $CMIMH_SCREENSHOTS (or the test's tmp folder)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    url, d = server
    shots = Path(os.environ.get("CMIMH_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('index').options.length > 0")
            page.fill("#q", "a red ball and a star")
            page.fill("#k", "8")
            page.click("#go")
            page.wait_for_selector("#grid figure >> nth=7")
            figs = page.locator("#grid figure")
            assert figs.count() == 8
            assert "distance" in figs.nth(0).inner_text() and "#1" in figs.nth(0).inner_text()
            page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && "
                                   "i.naturalWidth > 0)")
            assert "8 hits" in page.inner_text("#status")
            page.screenshot(path=str(shots / "serve_text_query.png"), full_page=True)
            # an image query: upload one of the database images
            from pipeline.search.index import load_index

            ix = load_index(d / "index")
            page.set_input_files("#img", str(ix.image_file(0)))
            page.fill("#k", "4")
            page.click("#go")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('4 hits')")
            assert page.locator("#grid figure").count() == 4
            page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && "
                                   "i.naturalWidth > 0)")
            page.screenshot(path=str(shots / "serve_image_query.png"), full_page=True)
            # a bad query shows the service's one line
            page.set_input_files("#img", [])
            page.fill("#q", "zzzz qqqq")
            page.click("#go")
            page.wait_for_function("document.getElementById('status').className === 'err'")
            assert "none of the query's words" in page.inner_text("#status")
            assert not errors, errors
        finally:
            browser.close()


def test_a_query_that_outlasts_the_timeout_is_503_in_one_line(run, monkeypatch):  # noqa: F811
    """The text endpoints wait for their query on the event loop (no thread per waiting request):
    a query the workers never answer is a 503 with one line after the service's timeout, for the
    GET, JSON POST and batch endpoints alike."""
    from concurrent.futures import Future

    from pipeline.search.service import Worker

    d, _, _ = run
    service = Service({"demo": load_index(d / "index")}, timeout_s=0.3)
    monkeypatch.setattr(Worker, "submit", lambda self, *a: Future())  # never answered
    try:
        with TestClient(create_app(service)) as c:
            t0 = time.perf_counter()
            _one_line_error(c.get("/api/search", params={"text": "a red ball"}), 503, "longer than")
            _one_line_error(c.post("/api/search", json={"text": "a red ball"}), 503, "longer than")
            _one_line_error(c.post("/api/search/batch", json={"texts": ["a red ball", "a star"]}), 503, "longer than")
            assert time.perf_counter() - t0 < 10
    finally:
        service.close()
