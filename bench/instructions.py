"""Chat client throughput and latency against a local OpenAI-compatible server.

Starts `transformers serve` on loopback over a tiny locally built chat model (random
weights, offline), then measures in this process:

- baseline: the server's own single-request rate — one request at a time with a plain
  blocking HTTP call (urllib), no client machinery;
- `acedata.instruct.client.ChatClient` at several concurrency levels: requests/s,
  p50/p95 latency, and the ratio of its rate to the baseline.

The ratio shows what bounded concurrency buys against a server that can overlap
requests, and what the client's own overhead costs when it cannot.

    .venv/bin/python bench/instructions.py [--requests 48] [--levels 1 2 4 8 16] [--max-tokens 16]
    .venv/bin/python bench/instructions.py --continuous-batching   # the server batches concurrent requests
    .venv/bin/python bench/instructions.py --standin               # the fault stand-in server instead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Instruction: Turn {{image}} into painting number {i}.\n- x"}]


def baseline(base_url: str, model: str, n: int, max_tokens: int) -> tuple[float, list[float]]:
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        body = json.dumps({"model": model, "messages": _prompt(i), "max_tokens": max_tokens,
                           "temperature": 0.7}).encode()
        req = urllib.request.Request(base_url + "/chat/completions", body, {"Content-Type": "application/json"})
        t = time.perf_counter()
        json.loads(urllib.request.urlopen(req, timeout=120).read())
        lat.append(time.perf_counter() - t)
    return n / (time.perf_counter() - t0), lat


def measure(base_url: str, model: str, n: int, max_tokens: int, concurrency: int) -> tuple[float, list[float], int]:
    from acedata.instruct.client import ChatClient, ChatRequest, EndpointConfig

    client = ChatClient(EndpointConfig(base_url=base_url, model=model, concurrency=concurrency,
                                       max_tokens=max_tokens, timeout_s=300, max_retries=2))
    t0 = time.perf_counter()
    out = client.complete_many([ChatRequest(_prompt(i)) for i in range(n)])
    dt = time.perf_counter() - t0
    return n / dt, [r.latency_s for r in out], sum(not r.ok for r in out)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=48, help="requests per measurement")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--continuous-batching", action="store_true", help="start the server with it")
    ap.add_argument("--standin", action="store_true", help="measure against tests/chat_standin.py instead")
    args = ap.parse_args()

    from llm_server import build_tiny_chat_model, start_standin, start_transformers_serve

    tmp = tempfile.mkdtemp(prefix="bench-instr-")
    if args.standin:
        srv, model, what = start_standin(), "paraphrase", "chat-completions stand-in (no model)"
    else:
        model = str(build_tiny_chat_model(os.path.join(tmp, "tiny")))
        srv = start_transformers_serve(model, os.path.join(tmp, "serve.log"))
        if args.continuous_batching:
            srv.stop()
            from llm_server import Server, free_port, wait_ready

            port = free_port()
            exe = os.path.join(os.path.dirname(sys.executable), "transformers")
            srv = Server([exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                          "--continuous-batching"], port, os.path.join(tmp, "serve.log"))
            wait_ready(srv.base_url, srv.proc, 180)
        what = "transformers serve, tiny random-init Llama on CPU" + (
            " (continuous batching)" if args.continuous_batching else "")
    try:
        baseline(srv.base_url, model, 4, args.max_tokens)  # warm-up: model load, first-call costs
        measure(srv.base_url, model, 2, args.max_tokens, 2)  # warm-up: client imports
        base_rate, base_lat = baseline(srv.base_url, model, args.requests, args.max_tokens)
        print(f"server: {what}; {args.requests} requests per row, max_tokens={args.max_tokens}")
        print(f"{'client':<22}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'failed':>8}{'ratio':>8}")
        print(f"{'baseline (serial)':<22}{base_rate:8.1f}{pct(base_lat, .5) * 1e3:9.0f}"
              f"{pct(base_lat, .95) * 1e3:9.0f}{0:8d}{1.0:8.2f}")
        for c in args.levels:
            rate, lat, failed = measure(srv.base_url, model, args.requests, args.max_tokens, c)
            print(f"{'ChatClient c=' + str(c):<22}{rate:8.1f}{pct(lat, .5) * 1e3:9.0f}{pct(lat, .95) * 1e3:9.0f}"
                  f"{failed:8d}{rate / base_rate:8.2f}")
        print(f"mean baseline latency {statistics.mean(base_lat) * 1e3:.0f} ms")
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
