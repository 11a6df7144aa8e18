"""Local OpenAI-compatible servers for the instruction tests and benchmark.

Two kinds of separate server process, both on loopback, both on a free port:

- `transformers serve` over a tiny chat model built here: a random-init Llama saved
  locally, a byte-level BPE tokenizer trained locally with `tokenizers`, and a chat
  template. A real server with a real model; its replies are gibberish.
- `tests/chat_standin.py`: a *stand-in* (not a model) speaking the chat-completions wire
  format, for what `transformers serve` cannot do here: a vision-language model reply
  and fault injection (slow replies, 5xx, 429, broken JSON, dropped connections).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Turn the photo of {image} into a watercolor painting.",
    "Remove the red car from {image} and fill the background naturally.",
    "Generate an image that follows the edge map in {image}: a cat on a sofa.",
    "Make {image1} look like the style of {image2}.",
    "Rewrite the instruction in different words, keep every image placeholder.",
] * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_chat_model(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-init Llama + a locally trained BPE tokenizer + chat template, saved to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def wait_ready(base_url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=2) as r:
                json.loads(r.read())
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"server at {base_url} not ready after {timeout} s")


class Server:
    """A server subprocess; `base_url` ends in /v1."""

    def __init__(self, cmd: list[str], port: int, log_path: str | None = None) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=_offline_env())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _started(cmd: list[str], port: int, log_path: str | None, timeout: float) -> Server:
    """Start `cmd` and wait until it answers /v1/models; stopped again (by pid) if it never does."""
    srv = Server(cmd, port, log_path)
    try:
        wait_ready(srv.base_url, srv.proc, timeout=timeout)
    except Exception:
        srv.stop()
        raise
    return srv


def start_transformers_serve(model_dir: str | Path, log_path: str | None = None) -> Server:
    """`transformers serve MODEL_DIR` on a free loopback port, offline, on CPU."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", "--default-seed", "0"]
    return _started(cmd, port, log_path, timeout=180)


def start_standin(log_path: str | None = None) -> Server:
    """The chat-completions stand-in (`tests/chat_standin.py`) on a free loopback port."""
    port = free_port()
    script = Path(__file__).with_name("chat_standin.py")
    return _started([sys.executable, str(script), "--port", str(port)], port, log_path, timeout=60)


if __name__ == "__main__":  # manual check: build, serve, ask once
    import tempfile

    d = build_tiny_chat_model(Path(tempfile.mkdtemp()) / "tiny")
    with start_transformers_serve(d) as s:
        body = json.dumps({"model": str(d), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
        req = urllib.request.Request(s.base_url + "/chat/completions", body.encode(),
                                     {"Content-Type": "application/json"})
        t0 = time.time()
        print(urllib.request.urlopen(req, timeout=60).read().decode(), time.time() - t0)
