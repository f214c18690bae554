"""The search service behind ``cmimh serve``: indexes loaded once, a JSON API and a web page.

Endpoints (every error is a 4xx with one line ``{"error": "..."}``, never a traceback):

* ``GET /healthz``: ``{"status": "ok", "indexes": [...]}``.
* ``GET /api/indexes``: each index's name, data set, method, bits, items and what it can answer.
* ``GET /api/search?text=...&k=10[&target=image|text][&index=NAME]``: a text query.
* ``POST /api/search`` with an image (multipart field ``image``, or the raw bytes with an
  ``image/*`` content type; ``k``, ``target``, ``index`` as query parameters), or JSON
  ``{"text": ...}``.
* ``POST /api/search/batch``: JSON ``{"texts": [...], "k": 10, "target": ..., "index": ...}``.
* ``GET /media/{id}?index=NAME``: the image of a database item (what a hit's ``image`` points to).
* ``GET /``: a page with a search box (text, or an image upload) showing the hits as thumbnails.

A hit is ``{"rank", "id", "distance", "target", "caption", "image"}``; responses carry ``ms``, the
server's time for the request. Queries of one index go through its encoder workers (threads,
``workers`` of them, by default one per core up to 4): a worker that wakes encodes the texts
waiting at that moment as one batch (the text encoder is most of a query's time, and a batch of 4
costs about twice one query) and ranks them together, leaving a share of the waiting queries to the
other idle workers, so that concurrent clients keep every core busy; torch runs one intra-op thread
per worker (OpenMP teams on a busy CPU spin: measured 75 ms a text query on 1 thread, 535 ms on 2).
"""


import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from pipeline.errors import PipelineError
from pipeline.search.index import MAX_BATCH, Index, check_query_text, hits as make_hits, image_query_features, \
    rank_codes, text_query_features

log = logging.getLogger(__name__)

#: Largest upload (bytes) by default; more is refused with 413.
DEFAULT_MAX_UPLOAD = 8 << 20
#: Largest k a request may ask for.
MAX_K = 1000
#: Most texts the worker encodes in one batch.
WORKER_BATCH = 64


class RequestError(Exception):
    """A bad request: HTTP ``status`` and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Job:
    kind: str  # "text" | "image"
    payload: Any
    k: int
    target: str
    future: Future


def default_workers() -> int:
    """Encoder threads per index by default: one per core, at most 4 (a query encodes in ~10-20 ms
    on one core; more workers than cores only contend)."""
    return max(1, min(4, os.cpu_count() or 1))


def check_workers(workers: int | None) -> int:
    """The encoder threads per index that ``workers`` asks for (None: the default); one line below 1."""
    n = default_workers() if workers is None else int(workers)
    if n < 1:
        raise PipelineError(f"serve: --workers must be >= 1, not {workers}")
    return n


class Worker:
    """The encoder threads of one index, sharing its queue of queries: a thread takes the query it
    wakes with plus its share of those waiting (all of them when the other threads are busy) and
    encodes the texts among them as one batch."""

    def __init__(self, index: Index, workers: int | None = None) -> None:
        self.index = index
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.n = check_workers(workers)
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a query
        self.threads = [threading.Thread(target=self._loop, name=f"search-{index.path.name}-{i}", daemon=True)
                        for i in range(self.n)]
        for t in self.threads:
            t.start()

    def submit(self, kind: str, payload: Any, k: int, target: str) -> Future:
        f: Future = Future()
        self.jobs.put(_Job(kind, payload, k, target, f))
        return f

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)

    def _take(self) -> list[_Job] | None:
        """The next batch for this thread: one query (waiting for it), then its share of the
        queries already waiting; None when the worker is closing."""
        with self._lock:
            self._idle += 1
        job = self.jobs.get()
        with self._lock:
            self._idle -= 1
            others = self._idle
        if job is None:
            return None
        share = self.jobs.qsize() // (others + 1) if others else WORKER_BATCH  # leave some to the idle ones
        batch = [job]
        while len(batch) < min(WORKER_BATCH, 1 + share):
            try:
                nxt = self.jobs.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self.jobs.put(None)  # another thread's stop signal
                break
            batch.append(nxt)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            texts = [j for j in batch if j.kind == "text"]
            if texts:
                self._run(texts, lambda js: text_query_features(self.index, [t for j in js for t in j.payload]),
                          self.index.model.encode_text)
            for j in batch:
                if j.kind == "image":
                    self._run([j], lambda js: image_query_features(self.index, [js[0].payload]),
                              self.index.model.encode_image)

    def _run(self, jobs: list[_Job], features: Callable, encode: Callable) -> None:
        try:
            try:
                codes = encode(features(jobs))
            except PipelineError:
                if len(jobs) == 1:
                    raise
                for j in jobs:  # one bad text must not fail the others: each on its own
                    self._run([j], features, encode)
                return
            row = 0
            for j in jobs:
                n = len(j.payload) if j.kind == "text" else 1
                idx, dist = rank_codes(self.index, codes[row:row + n], j.k, j.target)
                row += n
                j.future.set_result([make_hits(self.index, idx[i], dist[i], j.target) for i in range(n)])
        except Exception as e:  # noqa: BLE001 - handed to the request, which answers with one line
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)


class Service:
    """The loaded indexes (by name) and their workers."""

    def __init__(self, indexes: dict[str, Index], *, max_upload: int = DEFAULT_MAX_UPLOAD,
                 timeout_s: float = 60.0, workers: int | None = None) -> None:
        if not indexes:
            raise PipelineError("serve: no index")
        self.indexes = indexes
        self.default = next(iter(indexes))
        self.max_upload = int(max_upload)
        self.timeout_s = timeout_s
        self.workers = {name: Worker(ix, workers) for name, ix in indexes.items()}

    def close(self) -> None:
        for w in self.workers.values():
            w.close()

    # ------------------------------------------------------------------ parameters
    def index(self, name: str | None) -> tuple[str, Index]:
        name = name or self.default
        if name not in self.indexes:
            raise RequestError(404, f"unknown index {name!r} (known: {', '.join(self.indexes)})")
        return name, self.indexes[name]

    @staticmethod
    def k(value: Any) -> int:
        try:
            k = int(value)
        except (TypeError, ValueError):
            raise RequestError(400, f"k must be an integer, not {str(value)[:40]!r}") from None
        if not 1 <= k <= MAX_K or str(value).strip() not in (str(k), f"+{k}"):
            raise RequestError(400, f"k must be an integer from 1 to {MAX_K}, not {str(value)[:40]!r}")
        return k

    @staticmethod
    def target(value: Any, default: str) -> str:
        if value in (None, ""):
            return default
        if value not in ("image", "text"):
            raise RequestError(400, f"target must be image or text, not {str(value)[:40]!r}")
        return value

    def describe(self) -> list[dict]:
        out = []
        for name, ix in self.indexes.items():
            out.append({"name": name, "dataset": ix.meta.get("dataset"), "method": ix.meta.get("method"),
                        "bits": ix.bits, "items": int(len(ix.ids)),
                        "text_queries": ix.extractors.get("text") is not None,
                        "image_queries": ix.extractors.get("image") is not None,
                        "captions": ix.captions is not None, "images": ix.image_paths is not None})
        return out

    # ------------------------------------------------------------------ queries
    @contextmanager
    def _answering(self):
        """A query's failure as the request's one line: a bad query 400, one past the timeout 503."""
        try:
            yield
        except PipelineError as e:
            raise RequestError(400, str(e).splitlines()[0] if str(e) else "bad query") from None
        except TimeoutError:
            raise RequestError(503, f"the query took longer than {self.timeout_s:g} s") from None

    def _wait(self, f: Future) -> list[list[dict]]:
        with self._answering():
            return f.result(timeout=self.timeout_s)

    def _urls(self, name: str, ix: Index, results: list[list[dict]]) -> list[list[dict]]:
        for hl in results:
            for h in hl:
                h["image"] = (f"/media/{quote(h['id'], safe='')}?index={quote(name, safe='')}"
                              if h["image"] is not None else None)
        return results

    async def _wait_async(self, f: Future) -> list[list[dict]]:
        """:meth:`_wait` on the event loop: the request waits without holding a thread."""
        import asyncio

        with self._answering():
            return await asyncio.wait_for(asyncio.wrap_future(f), self.timeout_s)

    async def search_texts(self, texts: list, k: Any = 10, target: Any = None,
                           index: str | None = None) -> list[list[dict]]:
        """Hits of each text, awaited on the event loop (the API's text endpoints): no thread per
        waiting request (a thread hop per request and its GIL turns: p50 47 -> 40 ms at 8 clients, bf16)."""
        name, ix, f = self.submit_texts(texts, k, target, index)
        return self._urls(name, ix, await self._wait_async(f))

    def submit_texts(self, texts: list, k: Any = 10, target: Any = None,
                     index: str | None = None) -> tuple[str, Index, Future]:
        """Check a text query's parameters (4xx with one line) and queue it: (index name, index, future)."""
        name, ix = self.index(index)
        k, target = self.k(k), self.target(target, "image")
        if not isinstance(texts, list) or not texts:
            raise RequestError(400, "texts must be a non-empty list of strings")
        if len(texts) > MAX_BATCH:
            raise RequestError(413, f"{len(texts)} texts in one batch (at most {MAX_BATCH})")
        try:
            checked = [check_query_text(t, "text" if len(texts) == 1 else f"texts[{i}]") for i, t in enumerate(texts)]
        except PipelineError as e:
            raise RequestError(400, str(e)) from None
        if ix.extractors.get("text") is None:
            try:
                text_query_features(ix, checked[:1])  # the index's own one line
            except PipelineError as e:
                raise RequestError(400, str(e)) from None
        return name, ix, self.workers[name].submit("text", checked, k, target)

    def search_image(self, data: bytes, k: Any = 10, target: Any = None, index: str | None = None) -> list[dict]:
        name, ix = self.index(index)
        k, target = self.k(k), self.target(target, "text")
        if not data:
            raise RequestError(400, "empty image upload")
        if len(data) > self.max_upload:
            raise RequestError(413, f"upload of {len(data)} bytes is larger than {self.max_upload} bytes")
        return self._urls(name, ix, self._wait(self.workers[name].submit("image", data, k, target)))[0]

    def media(self, item_id: str, index: str | None = None) -> Path:
        _, ix = self.index(index)
        row = ix.row_of(item_id)
        if row is None:
            raise RequestError(404, f"no item {item_id[:80]!r} in this index")
        path = ix.image_file(row)
        if path is None:
            raise RequestError(404, "this index records no images (built without the data set's manifest)")
        if not path.is_file():
            raise RequestError(404, f"image of {item_id[:80]!r} not found at {path}")
        return path


# ----------------------------------------------------------------------------- the web app

class _BodyLimit:
    """ASGI middleware: refuse a request body larger than ``limit`` bytes with 413, from its
    Content-Length or, when streamed without one, as soon as it grows past the limit."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = f"request body larger than {self.limit} bytes".encode()
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _send_error(send, 400, "bad Content-Length header")
            if n > self.limit:
                return await _send_error(send, 413, too_big.decode())
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, too_big.decode())


class _TooLarge(Exception):
    pass


async def _send_error(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(service: Service):
    """The FastAPI application of ``service``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="cmimh search", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body"))
        return error(400, f"bad parameter {where}: {first.get('msg', 'invalid')}".strip())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail).splitlines()[0] if exc.detail else "error")

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error answering %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server's log")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "indexes": list(service.indexes)}

    @app.get("/api/indexes")
    def indexes():
        return {"indexes": service.describe(), "default": service.default, "max_k": MAX_K,
                "max_upload": service.max_upload}

    @app.get("/api/search")
    async def search_get(text: str | None = None, k: str = "10", target: str | None = None, index: str | None = None):
        if text is None:
            raise RequestError(400, "give text=... (or POST an image)")
        return await _run_text(text, k, target, index, time.perf_counter())

    @app.post("/api/search")
    async def search_post(request: Request, k: str = "10", target: str | None = None, index: str | None = None):
        ctype = request.headers.get("content-type", "")
        t0 = time.perf_counter()
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=10, max_part_size=service.max_upload)
            up = form.get("image")
            if up is None or isinstance(up, str):
                if isinstance(form.get("text"), str):
                    return await _run_text(form.get("text"), form.get("k", k), form.get("target", target),
                                           form.get("index", index), t0)
                raise RequestError(400, "multipart upload without a file field 'image'")
            data = await up.read()
            kk, tt, ii = form.get("k", k), form.get("target", target), form.get("index", index)
        elif ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
            data, kk, tt, ii = await request.body(), k, target, index
        elif ctype.startswith("application/json"):
            body = await _json(request)
            if not isinstance(body, dict) or "text" not in body:
                raise RequestError(400, 'JSON body must be {"text": ...}')
            return await _run_text(body["text"], body.get("k", k), body.get("target", target),
                                   body.get("index", index), t0)
        else:
            raise RequestError(415, f"unsupported content type {ctype[:60]!r} (multipart/form-data with an image, "
                                    "image/*, or application/json)")
        import asyncio

        hits = await asyncio.get_running_loop().run_in_executor(None, service.search_image, data, kk, tt, ii)
        return JSONResponse({"hits": hits, "ms": round(1000 * (time.perf_counter() - t0), 2)})

    async def _run_text(text, k, target, index, t0):
        res = await service.search_texts([text], k, target, index)
        return JSONResponse({"hits": res[0], "ms": round(1000 * (time.perf_counter() - t0), 2)})

    async def _json(request: Request):
        import json

        try:
            return json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "body is not valid JSON") from None

    @app.post("/api/search/batch")
    async def search_batch(request: Request):
        body = await _json(request)
        if not isinstance(body, dict) or "texts" not in body:
            raise RequestError(400, 'JSON body must be {"texts": [...], "k": ..., "target": ..., "index": ...}')
        t0 = time.perf_counter()
        res = await service.search_texts(body["texts"], body.get("k", 10), body.get("target"), body.get("index"))
        return JSONResponse({"results": [{"hits": h} for h in res], "ms": round(1000 * (time.perf_counter() - t0), 2)})

    @app.get("/media/{item_id:path}")  # folder ids hold slashes (2019/trip/IMG_0001)
    def media(item_id: str, index: str | None = None):
        return FileResponse(service.media(item_id, index), headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(PAGE)

    app.add_middleware(_BodyLimit, limit=service.max_upload + (64 << 10))  # multipart framing on top
    return app


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cmimh search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:14px 24px}
 header h1{font-size:18px;margin:0;font-weight:600}
 header small{color:#aab3c5}
 form{display:flex;flex-wrap:wrap;gap:10px;align-items:center;padding:16px 24px;background:#fff;
      border-bottom:1px solid #dde1e8}
 input[type=text]{flex:1 1 320px;font-size:16px;padding:8px 10px;border:1px solid #b9c0cc;border-radius:6px}
 select,input[type=number]{font-size:14px;padding:7px;border:1px solid #b9c0cc;border-radius:6px}
 input[type=number]{width:70px}
 button{font-size:15px;padding:8px 16px;border:0;border-radius:6px;background:#2f6fde;color:#fff;cursor:pointer}
 label{font-size:14px;color:#4a5366}
 #status{padding:8px 24px;font-size:14px;color:#4a5366;min-height:20px}
 #status.err{color:#b3261e}
 #grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:14px;padding:8px 24px 32px}
 figure{margin:0;background:#fff;border:1px solid #dde1e8;border-radius:8px;overflow:hidden}
 figure img{width:100%;aspect-ratio:1/1;object-fit:cover;display:block;background:#e9ecf1}
 figure .noimg{width:100%;aspect-ratio:1/1;display:flex;align-items:center;justify-content:center;
               background:#e9ecf1;color:#7a8497;font-size:13px}
 figcaption{padding:8px 10px;font-size:13px;line-height:1.35}
 .meta{color:#6b7486;font-size:12px;margin-bottom:3px}
 .d{font-weight:600;color:#2f6fde}
</style></head>
<body>
<header><h1>cmimh search <small id="about"></small></h1></header>
<form id="f">
 <input type="text" id="q" name="text" placeholder="Describe what you are looking for, e.g. a red ball next to a star"
        autocomplete="off">
 <label>or an image <input type="file" id="img" accept="image/*"></label>
 <label>k <input type="number" id="k" value="12" min="1" max="1000"></label>
 <label>search <select id="target"><option value="">the other modality</option>
   <option value="image">images</option><option value="text">texts</option></select></label>
 <label>index <select id="index"></select></label>
 <button type="submit" id="go">Search</button>
</form>
<div id="status"></div>
<div id="grid"></div>
<script>
const $ = (id) => document.getElementById(id);
function esc(s){return String(s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));}
async function init(){
  try{
    const r = await fetch('/api/indexes'); const j = await r.json();
    for(const ix of j.indexes){
      const o = document.createElement('option'); o.value = ix.name;
      o.textContent = ix.name + ' (' + ix.items + ' items, ' + ix.bits + ' bits)'; $('index').appendChild(o);
    }
    $('index').value = j.default;
    const d = j.indexes.find(x => x.name === j.default);
    if(d) $('about').textContent = '· ' + [d.dataset, d.method, d.bits + ' bits', d.items + ' items'].filter(Boolean).join(' · ');
  }catch(e){ status('cannot reach the service: ' + e, true); }
}
function status(msg, err){ $('status').textContent = msg; $('status').className = err ? 'err' : ''; }
function show(j){
  const g = $('grid'); g.innerHTML = '';
  for(const h of j.hits){
    const f = document.createElement('figure');
    const pic = h.image ? '<img src="' + esc(h.image) + '" alt="' + esc(h.caption || h.id) + '">'
                        : '<div class="noimg">' + esc(h.target === 'text' ? 'text item' : 'no image') + '</div>';
    f.innerHTML = pic + '<figcaption><div class="meta">#' + h.rank + ' · id ' + esc(h.id) +
      ' · <span class="d">distance ' + h.distance + '</span></div>' + esc(h.caption || '') + '</figcaption>';
    g.appendChild(f);
  }
  status(j.hits.length + ' hits in ' + j.ms + ' ms');
}
$('f').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const params = new URLSearchParams({k: $('k').value, index: $('index').value});
  if($('target').value) params.set('target', $('target').value);
  const file = $('img').files[0];
  let r;
  status('searching…');
  try{
    if(file){
      const fd = new FormData(); fd.append('image', file);
      r = await fetch('/api/search?' + params, {method: 'POST', body: fd});
    }else{
      if(!$('q').value.trim()){ status('type a query or choose an image', true); return; }
      params.set('text', $('q').value);
      r = await fetch('/api/search?' + params);
    }
    const j = await r.json();
    if(!r.ok){ status(j.error || ('error ' + r.status), true); $('grid').innerHTML = ''; return; }
    show(j);
  }catch(e){ status('request failed: ' + e, true); }
});
$('img').addEventListener('change', () => { if($('img').files[0]) $('q').value = ''; });
$('q').addEventListener('input', () => { if($('q').value) $('img').value = ''; });
init();
</script>
</body></html>
"""
