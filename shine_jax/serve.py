"""``shine-jax serve``: a page on this machine to try a trained SHINE run.

Paste or upload a document, generate its adapter (the seconds it took are shown), then chat about it: each turn is
answered three ways side by side, by the adapter (``shine``, the document not in the prompt), by the base alone
(``none``) and by the base reading the document in its first turn (``icl``). A slider scales the adapter's update;
the adapter downloads as a PEFT folder in a zip (``Shine.export_peft``, provenance included).

Standard library only (``http.server``): one process holds one model and answers one request at a time. It binds
to 127.0.0.1 unless told otherwise; a document larger than ``max_upload_bytes`` is refused with a clear error.
"""

from __future__ import annotations

import collections
import http.server
import io
import json
import math
import pathlib
import secrets
import socket
import tempfile
import threading
import time
import traceback
import urllib.parse
import warnings
import zipfile
from typing import Any

from shine_jax.data import prompts
from shine_jax.errors import InputError

METHODS = ("shine", "none", "icl")
MAX_SCALE = 4.0


class Session:
    """The model and the adapters generated so far (the newest ``keep`` of them), used one request at a time."""

    def __init__(self, shine, keep: int = 16, max_new_tokens: int = 48, max_doc_tokens: int = 2048):
        self.shine, self.keep, self.max_new_tokens = shine, keep, max_new_tokens
        # icl reads the document in its prompt: at most this many tokens, and room for the conversation
        positions = shine.base.cfg.max_position_embeddings
        self.max_doc_tokens = max(1, min(max_doc_tokens, positions - 4 * max_new_tokens - 256))
        self.lock = threading.Lock()
        self.adapters: collections.OrderedDict[str, tuple[str, dict]] = collections.OrderedDict()

    def make_adapter(self, document: str) -> dict[str, Any]:
        """Generate a document's adapter; -> its id, the seconds it took, its token count and any warning (a long
        document is truncated to the evidence length, as ``ask`` does)."""
        if not isinstance(document, str) or not document.strip():
            raise InputError("the document is empty: paste or upload some text first")
        with self.lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            start = time.perf_counter()
            lora = self.shine.adapter(document)
            seconds = time.perf_counter() - start
            adapter_id = secrets.token_hex(6)
            self.adapters[adapter_id] = (document, lora)
            while len(self.adapters) > self.keep:
                self.adapters.popitem(last=False)
            tokens = len(prompts.encode_text(self.shine.base.tokenizer, document))
        notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        return {"id": adapter_id, "seconds": round(seconds, 3), "tokens": tokens,
                "max_tokens": self.shine.max_evidence_length, "warning": "; ".join(notes) or None}

    def _adapter(self, adapter_id: Any) -> tuple[str, dict]:
        try:
            return self.adapters[str(adapter_id)]
        except KeyError:
            raise InputError(f"no adapter {adapter_id!r} here (the server keeps the newest {self.keep}): "
                             "generate it again") from None

    def answer(self, adapter_id: str, messages: list[dict], scale: float = 1.0,
               methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, Any]]:
        """The next assistant turn of ``messages`` by each method, with the seconds each took."""
        from shine_jax.model.lora import compose_examples

        scale = check_scale(scale)
        if not isinstance(methods, (list, tuple)) or not methods or not all(m in METHODS for m in methods):
            raise InputError(f"methods must be a list of {', '.join(METHODS)}, got {methods!r}")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                     for m in messages):
            raise InputError("messages must be a list of {role, content} objects")
        if not any(m.get("role") == "user" for m in messages):
            raise InputError("a conversation needs a user message")
        document, lora = self._adapter(adapter_id)
        out = {}
        with self.lock:
            for method in methods:
                start = time.perf_counter()
                if method == "shine":
                    text = self.shine.chat(compose_examples(lora, [0], [scale]), messages, self.max_new_tokens)
                elif method == "none":
                    text = self.shine.chat(None, messages, self.max_new_tokens)
                else:  # icl: the document before the first question, as the harness's in-context method reads it
                    first = next(i for i, m in enumerate(messages) if m.get("role") == "user")
                    read = [dict(m) for m in messages]
                    read[first]["content"] = prompts.icl_user_text(self._icl_document(document),
                                                                   read[first]["content"])
                    text = self.shine.chat(None, read, self.max_new_tokens)
                out[method] = {"answer": text, "seconds": round(time.perf_counter() - start, 3)}
        return out

    def _icl_document(self, document: str) -> str:
        """The document as icl reads it: its first ``max_doc_tokens`` tokens (a longer one would not fit)."""
        tok = self.shine.base.tokenizer
        ids = prompts.encode_text(tok, document)
        return document if len(ids) <= self.max_doc_tokens else tok.decode(ids[:self.max_doc_tokens])

    def peft_zip(self, adapter_id: str, scale: float = 1.0) -> bytes:
        """The adapter as a PEFT folder (``adapter/``: config, safetensors, provenance), zipped."""
        scale = check_scale(scale)
        document, lora = self._adapter(adapter_id)
        with tempfile.TemporaryDirectory() as tmp:
            with self.lock:
                folder = self.shine.export_peft(lora, pathlib.Path(tmp) / "adapter", scale=scale,
                                                documents=[document])
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        zf.write(path, f"adapter/{path.relative_to(folder)}")
        return buffer.getvalue()


def check_scale(scale: Any) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise InputError(f"scale must be a number, got {scale!r}") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_SCALE:
        raise InputError(f"scale must be between 0 and {MAX_SCALE:g}, got {scale!r}")
    return value


class UploadTooLarge(InputError):
    pass


def make_handler(session: Session, max_upload_bytes: int, log=print):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "shine-jax"

        def log_message(self, fmt, *args):  # one line per request, through the server's log
            log(f"[serve] {self.address_string()} {fmt % args}")

        def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _body(self) -> dict:
            try:
                declared = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                declared = -1
            if declared < 0:
                self.close_connection = True
                raise InputError("the request has no valid Content-Length")
            if declared > max_upload_bytes:
                # read and drop a moderate excess (never held), so the client reads the answer rather than a
                # reset; beyond that, answer and close the connection
                left = declared if declared <= 16 * max_upload_bytes else 0
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
                self.close_connection = True
                raise UploadTooLarge(f"the upload is {declared:,} bytes, more than the limit of "
                                     f"{max_upload_bytes:,} (start the server with a larger --max-upload-mb)")
            try:
                body = json.loads(self.rfile.read(declared).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(f"the request is not UTF-8 JSON ({e})") from None
            if not isinstance(body, dict):
                raise InputError(f"the request must be a JSON object, got {type(body).__name__}")
            return body

        def _guard(self, work) -> None:
            try:
                work()
            except UploadTooLarge as e:
                self._json(413, {"error": str(e)})
            except InputError as e:
                self._json(400, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - a bug: the page says so, the console keeps the traceback
                log(traceback.format_exc())
                self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

        def do_GET(self):  # noqa: N802 - http.server's naming
            url = urllib.parse.urlparse(self.path)
            if url.path in ("/", "/index.html"):
                return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            if url.path.startswith("/api/adapter/") and url.path.endswith(".zip"):
                adapter_id = url.path[len("/api/adapter/"):-len(".zip")]
                scale = urllib.parse.parse_qs(url.query).get("scale", ["1"])[0]
                return self._guard(lambda: self._send(
                    200, session.peft_zip(adapter_id, scale), "application/zip",
                    {"Content-Disposition": f'attachment; filename="shine-adapter-{adapter_id}.zip"'}))
            self._json(404, {"error": f"no page {url.path}"})

        def do_POST(self):  # noqa: N802
            path = urllib.parse.urlparse(self.path).path
            if path == "/api/adapter":
                return self._guard(lambda: self._json(200, session.make_adapter(self._body().get("document"))))
            if path == "/api/chat":
                def chat():
                    body = self._body()
                    self._json(200, session.answer(body.get("adapter", ""), body.get("messages"),
                                                   body.get("scale", 1.0), body.get("methods", list(METHODS))))
                return self._guard(chat)
            self._json(404, {"error": f"no endpoint {path}"})

    return Handler


def make_server(session: Session, host: str = "127.0.0.1", port: int = 8000,
                max_upload_bytes: int = 1 << 20, log=print) -> http.server.ThreadingHTTPServer:
    """The HTTP server of ``session`` (not yet serving: call ``serve_forever``; port 0 picks a free one)."""
    server_class = http.server.ThreadingHTTPServer
    if ":" in host:  # an IPv6 address
        server_class = type("ThreadingHTTPServer6", (server_class,), {"address_family": socket.AF_INET6})
    return server_class((host, port), make_handler(session, max_upload_bytes, log))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shine-jax: a document to LoRA in one pass</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 1.5rem auto; padding: 0 1rem; }
 textarea { width: 100%; box-sizing: border-box; font-family: inherit; }
 .row { display: flex; gap: .75rem; align-items: center; flex-wrap: wrap; margin: .5rem 0; }
 .answers { display: grid; grid-template-columns: repeat(3, 1fr); gap: .75rem; }
 .answers div { border: 1px solid #ccc; border-radius: 6px; padding: .5rem; min-height: 3rem; }
 .answers h3 { margin: 0 0 .25rem; font-size: .9rem; color: #555; }
 .turn { margin: .75rem 0; } .q { font-weight: 600; } .err { color: #b00020; } .muted { color: #666; }
</style></head>
<body>
<h1>shine-jax</h1>
<p class="muted">The document becomes LoRA weights in one forward pass; the model then answers without it in the
prompt (<b>shine</b>), beside the base alone (<b>none</b>) and the base reading the document (<b>icl</b>).</p>
<h2>1. Document</h2>
<textarea id="document" rows="8" placeholder="Paste a document here, or upload a text file"></textarea>
<div class="row"><input type="file" id="file" accept=".txt,.md,text/plain">
 <button id="generate">Generate adapter</button> <span id="adapter-status" class="muted"></span></div>
<h2>2. Chat</h2>
<div class="row"><label for="scale">adapter scale</label>
 <input type="range" id="scale" min="0" max="2" step="0.05" value="1"> <span id="scale-value">1.00</span>
 <a id="download" href="#" hidden>download the PEFT adapter (zip)</a></div>
<div id="turns"></div>
<div class="row"><input id="question" size="70" placeholder="Ask about the document">
 <button id="ask" disabled>Ask</button> <button id="reset">New conversation</button>
 <span id="chat-status" class="muted"></span></div>
<script>
// One conversation per method; a turn is committed to all three only when every answer came back, and only if
// no adapter was generated (or the conversation reset) meanwhile.
let adapter = null, epoch = 0, history = {shine: [], none: [], icl: []};
const $ = (id) => document.getElementById(id);
async function call(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                               body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
function busy(on) { for (const id of ["generate", "ask", "reset"]) $(id).disabled = on || (id === "ask" && !adapter); }
function updateDownload() {
  const a = $("download");
  a.hidden = !adapter;
  if (adapter) a.href = `/api/adapter/${adapter}.zip?scale=${$("scale").value}`;
}
$("file").addEventListener("change", async (e) => {
  const f = e.target.files[0];
  if (f) $("document").value = await f.text();
});
$("scale").addEventListener("input", () => {
  $("scale-value").textContent = Number($("scale").value).toFixed(2); updateDownload(); });
$("generate").addEventListener("click", async () => {
  const status = $("adapter-status");
  status.className = "muted"; status.textContent = "generating...";
  busy(true);
  try {
    const r = await call("/api/adapter", {document: $("document").value});
    adapter = r.id; resetChat();
    status.textContent = `adapter ${r.id} generated in ${r.seconds.toFixed(2)} s from ${r.tokens} tokens` +
      (r.warning ? ` (${r.warning})` : "");
    updateDownload();
  } catch (err) { status.className = "err"; status.textContent = err.message; }
  busy(false);
});
function resetChat() { epoch += 1; history = {shine: [], none: [], icl: []}; $("turns").innerHTML = ""; }
$("reset").addEventListener("click", resetChat);
$("ask").addEventListener("click", async () => {
  const q = $("question").value.trim();
  if (!q || !adapter) return;
  const status = $("chat-status"), mine = epoch, id = adapter, scale = Number($("scale").value);
  status.className = "muted"; status.textContent = "answering...";
  busy(true);
  try {
    const answers = {}, next = {};
    for (const m of ["shine", "none", "icl"]) {  // each method keeps its own conversation
      const messages = history[m].concat([{role: "user", content: q}]);
      const r = await call("/api/chat", {adapter: id, messages, scale, methods: [m]});
      answers[m] = r[m];
      next[m] = messages.concat([{role: "assistant", content: r[m].answer}]);
    }
    if (mine === epoch) {
      history = next;
      const turn = document.createElement("div");
      turn.className = "turn"; turn.id = `turn-${$("turns").children.length}`;
      turn.innerHTML = `<div class="q"></div><div class="answers">` +
        ["shine", "none", "icl"].map((m) => `<div><h3>${m}</h3><span class="answer" data-method="${m}"></span>` +
                                            `<div class="muted"></div></div>`).join("") + `</div>`;
      turn.querySelector(".q").textContent = "Q: " + q;
      for (const m of ["shine", "none", "icl"]) {
        const cell = turn.querySelector(`[data-method="${m}"]`);
        cell.textContent = answers[m].answer;
        cell.nextElementSibling.textContent = `${answers[m].seconds.toFixed(2)} s`;
      }
      $("turns").appendChild(turn);
      $("question").value = "";
    }
    status.textContent = "";
  } catch (err) { status.className = "err"; status.textContent = err.message; }
  busy(false);
});
</script>
</body></html>
"""
