"""A STAND-IN chat-completions server (not a model) for the instruction tests.

Runs as its own process on loopback and speaks the OpenAI chat-completions wire
format (`GET /v1/models`, `POST /v1/chat/completions`). It covers what a tiny
`transformers serve` model cannot: a vision-language reply that depends on the images
actually sent (decoded from the data URLs), and fault injection. The `model` field
picks the behaviour:

- `vlm`          image-aware replies: a JSON differences/commonalities analysis for two
                 images (strict JSON when `response_format` asks for a schema, otherwise
                 prose around a fenced JSON block), a caption for one image.
- `vlm-broken`   never returns parseable JSON.
- `vlm-plain`    like `vlm` but answers 400 to structured-output requests.
- `writer`       turns an analysis in the prompt into an instruction with `{image}`
                 (`paraphrase` does too when the prompt holds an analysis).
- `captioner`    one-call instruction for an image pair.
- `paraphrase`   rewrites the instruction in the prompt, scripted by how often that
                 instruction was asked for: a new wording, then a duplicate, a version that
                 drops the image indicator, a refusal, an invented indicator, an empty
                 reply, then new wordings again.
- `fault:KIND:N[:SECONDS]`  the first N requests per distinct prompt fail with KIND
                 (500, 503, 429, drop, badbody, nochoices, slow); later ones answer like `paraphrase`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_attempts: dict[str, int] = {}
_steps: dict[str, int] = {}  # paraphrase requests seen per instruction
_lock = threading.Lock()
_load: dict[str, dict[str, int]] = {}  # model -> in_flight, max_in_flight, requests

_WORDINGS = [
    "Please {verb} {image}{rest}.",
    "Could you {verb} {image}{rest}?",
    "I would like you to {verb} {image}{rest}.",
    "Go ahead and {verb} {image}{rest}.",
    "Kindly {verb} {image}{rest}.",
]


def _text_of(messages: list[dict]) -> str:
    parts = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if p.get("type") == "text")
    return "\n".join(parts)


def _images_of(messages: list[dict]) -> list[bytes]:
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            for p in c:
                if p.get("type") == "image_url":
                    url = p["image_url"]["url"]
                    out.append(base64.b64decode(url.split(",", 1)[1]))
    return out


def _describe(data: bytes) -> dict:
    from PIL import Image, ImageStat

    im = Image.open(io.BytesIO(data)).convert("RGB")
    r, g, b = ImageStat.Stat(im).mean
    tone = max((r, "red"), (g, "green"), (b, "blue"))[1]
    return {"size": im.size, "brightness": (r + g + b) / 3, "tone": tone}


def _analysis(images: list[bytes]) -> dict:
    a, b = _describe(images[0]), _describe(images[1])
    diffs = []
    if abs(a["brightness"] - b["brightness"]) > 2:
        diffs.append("the second image is " + ("brighter" if b["brightness"] > a["brightness"] else "darker"))
    if a["tone"] != b["tone"]:
        diffs.append(f"the colours shift from {a['tone']} to {b['tone']} tones")
    if not diffs:
        diffs.append("the second image shows small changes in detail")
    return {
        "differences": diffs,
        "commonalities": ["the same scene layout"],
        "sizes": [list(a["size"]), list(b["size"])],
    }


def _paraphrase(prompt: str) -> str:
    """Scripted by the step = how many times this instruction was asked for before (stateful)."""
    m = re.search(r"Instruction:\s*(.+)", prompt)
    src = (m.group(1) if m else prompt).strip().rstrip(".?!")
    earlier = re.findall(r"^- (.+)$", prompt, flags=re.MULTILINE)
    with _lock:
        step = _steps.get(src, 0) + 1
        _steps[src] = step
    if step == 2:
        return earlier[0]  # an exact duplicate of an earlier version
    if step == 3:
        return re.sub(r"\{image\d*\}", "the picture", src) + "."  # drops the indicator
    if step == 4:
        return "I'm sorry, but I can't help with that."
    if step == 5:
        return src + " and match {image7}."  # invents an indicator
    if step == 6:
        return ""
    body = src[0].lower() + src[1:]
    verb, _, rest = body.partition(" ")
    ind = re.search(r"\{image\d*\}", rest)
    if not ind:
        return f"Please {body}."
    rest = " ".join(rest.replace(ind.group(0), "", 1).split())
    return _WORDINGS[step % len(_WORDINGS)].format(verb=verb, image=ind.group(0), rest=" " + rest if rest else "")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms
        # to every reply on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/stats":  # stand-in only: observed load per model, for the tests
            with _lock:
                self._send(200, json.dumps(_load).encode())
            return
        if self.path.rstrip("/") == "/v1/models":
            names = ["vlm", "vlm-broken", "writer", "captioner", "paraphrase"]
            self._send(200, json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
                       .encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        model = req.get("model", "")
        with _lock:
            load = _load.setdefault(model, {"in_flight": 0, "max_in_flight": 0, "requests": 0})
            load["in_flight"] += 1
            load["requests"] += 1
            load["max_in_flight"] = max(load["max_in_flight"], load["in_flight"])
        try:
            self._post(req, model)
        finally:
            with _lock:
                load["in_flight"] -= 1

    def _post(self, req: dict, model: str) -> None:
        if model == "vlm-plain" and (req.get("response_format") or "guided_json" in req):
            self._send(400, b'{"error": {"message": "response_format is not supported"}}')
            return
        model = "vlm" if model == "vlm-plain" else model
        messages = req.get("messages", [])
        prompt = _text_of(messages)
        if model.startswith("fault:"):
            if self._fault(model, req):
                return
            model = "paraphrase"
        content = self._reply(model, req, prompt, messages)
        body = {
            "id": "standin-" + hashlib.sha1(prompt.encode()).hexdigest()[:8],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split()),
                      "total_tokens": len(prompt.split()) + len(content.split())},
        }
        self._send(200, json.dumps(body).encode())

    def _fault(self, model: str, req: dict) -> bool:
        """Inject a fault for the first N attempts of this prompt; True when the request was consumed."""
        parts = model.split(":")
        kind, n = parts[1], int(parts[2])
        seconds = float(parts[3]) if len(parts) > 3 else 5.0
        key = model + json.dumps(req.get("messages"), sort_keys=True)
        with _lock:
            seen = _attempts.get(key, 0)
            _attempts[key] = seen + 1
        if seen >= n:
            return False
        if kind in ("500", "503"):
            self._send(int(kind), b'{"error": {"message": "injected server error"}}')
        elif kind == "429":
            self._send(429, b'{"error": {"message": "injected rate limit"}}', {"Retry-After": "0.05"})
        elif kind == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif kind == "badbody":
            self._send(200, b'{"id": "x", "choices": [{"message": {"content": "trunc')
        elif kind == "nochoices":
            self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                        "model": req.get("model"), "choices": []}).encode())
        elif kind == "slow":
            time.sleep(seconds)
            return False
        return True

    def _reply(self, model: str, req: dict, prompt: str, messages: list[dict]) -> str:
        images = _images_of(messages)
        if model == "vlm-broken":
            return "The differences are: {differences: [brighter, 'bluer'"
        if model == "vlm":
            if len(images) >= 2:
                data = _analysis(images)
                fmt = req.get("response_format") or {}
                if fmt.get("type") in ("json_schema", "json_object") or "guided_json" in req:
                    return json.dumps(data)
                return "Here is my analysis:\n```json\n" + json.dumps(data, indent=1) + "\n```\nHope it helps."
            if len(images) == 1:
                d = _describe(images[0])
                return f"A photograph in mostly {d['tone']} tones, {d['size'][0]}x{d['size'][1]} pixels."
            return "No image was given."
        if model == "writer" or (model == "paraphrase" and '"differences"' in prompt):
            m = re.search(r'"differences":\s*\[\s*"([^"]+)"', prompt)
            diff = m.group(1) if m else "it changes"
            diff = re.sub(r"^the second image is ", "", diff)
            return f"Edit {{image}} so that {diff}."
        if model == "captioner":
            if len(images) != 2:
                return "I need two images."
            diff = _analysis(images)["differences"][0].replace("the second image is ", "")
            return f"Make {{image}} {diff}."
        return _paraphrase(prompt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    srv.serve_forever()


if __name__ == "__main__":
    main()
