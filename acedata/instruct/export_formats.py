"""Writers of captioner fine-tuning records, one per framework's layout.

Every writer gets records in order: `add(rec, paths, images)` with the record's image paths
(relative to the output folder; inputs first, target last) and, for writers that embed them,
the image bytes. Files are written under a temporary name and renamed by `close()`.

- `internvl` -> `captioner.jsonl`: InternVL fine-tuning chat layout (kept stable: the captioner
  training reads it): {"id", "image": [paths], "conversations": [human, gpt], task, subtask, method}.
- `messages` -> `captioner.jsonl`: OpenAI/transformers-style content parts.
- `sharegpt` -> `captioner_sharegpt.json` + a `dataset_info.json` entry (LLaMA-Factory):
  [{"messages": [{"role": "user", "content": "<image>...prompt"}, {"role": "assistant", ...}],
  "images": [paths]}]; one `<image>` token per image, as LLaMA-Factory checks.
- `hf` -> `data/train-*.parquet` (+ README.md naming the split): a Hugging Face dataset whose
  `images` column is a list of Image features with the bytes inline, so
  `datasets.load_dataset(OUT)` decodes them to PIL images with no other file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from acedata.schemas import IMAGE, with_hf_metadata

FORMATS = ("internvl", "messages", "sharegpt", "hf")
SHAREGPT_FILE = "captioner_sharegpt.json"
DATASET_NAME = "acedata_captioner"  # the dataset_info.json key LLaMA-Factory's --dataset names
HF_ROWS_PER_FILE = 2000


def image_tags(n: int) -> str:
    return "".join(f"Image-{i}: <image>\n" for i in range(1, n + 1))


def _meta(rec: dict[str, Any]) -> dict[str, Any]:
    return {"task": rec.get("task"), "subtask": rec.get("subtask"), "method": rec["method"]}


class JsonlWriter:
    """`internvl` and `messages`: one JSON object per line in captioner.jsonl."""

    embeds_images = False

    def __init__(self, out_dir: str, fmt: str) -> None:
        self.fmt = fmt
        self.path = os.path.join(out_dir, "captioner.jsonl")
        self.f = open(self.path + ".tmp", "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def add(self, rec: dict[str, Any], paths: list[str], images: list[bytes] | None = None) -> None:
        if self.fmt == "internvl":
            body = {"id": rec["id"], "image": paths, "conversations": [
                {"from": "human", "value": image_tags(len(paths)) + rec["prompt"]},
                {"from": "gpt", "value": rec["instruction"]}], **_meta(rec)}
        else:
            content: list[dict[str, Any]] = [{"type": "image", "image": p} for p in paths]
            content.append({"type": "text", "text": rec["prompt"]})
            body = {"id": rec["id"], "messages": [{"role": "user", "content": content},
                                                  {"role": "assistant", "content": rec["instruction"]}], **_meta(rec)}
        self.f.write(json.dumps(body, ensure_ascii=False) + "\n")

    def close(self) -> list[str]:
        self.f.close()
        os.replace(self.path + ".tmp", self.path)
        return [self.path]


class ShareGPTWriter:
    """LLaMA-Factory's ShareGPT multimodal layout: one JSON list plus its dataset_info.json entry."""

    embeds_images = False

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, SHAREGPT_FILE)
        self.f = open(self.path + ".tmp", "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.f.write("[")
        self.n = 0

    def add(self, rec: dict[str, Any], paths: list[str], images: list[bytes] | None = None) -> None:
        body = {"id": rec["id"], "messages": [
            {"role": "user", "content": image_tags(len(paths)) + rec["prompt"]},
            {"role": "assistant", "content": rec["instruction"]}], "images": paths, **_meta(rec)}
        self.f.write(("," if self.n else "") + "\n" + json.dumps(body, ensure_ascii=False))
        self.n += 1

    def close(self) -> list[str]:
        self.f.write("\n]\n")
        self.f.close()
        os.replace(self.path + ".tmp", self.path)
        info_path = os.path.join(self.out_dir, "dataset_info.json")
        info: dict[str, Any] = {}
        if os.path.exists(info_path):  # keep other entries a user added
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
        info[DATASET_NAME] = {
            "file_name": SHAREGPT_FILE, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
        with open(info_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        os.replace(info_path + ".tmp", info_path)
        return [self.path, info_path]


MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
HF_SCHEMA = with_hf_metadata(pa.schema([
    ("id", pa.string()), ("pair_id", pa.string()), ("task", pa.string()), ("subtask", pa.string()),
    ("method", pa.string()), ("prompt", pa.string()), ("instruction", pa.string()),
    ("images", pa.list_(IMAGE)), ("messages", pa.list_(MESSAGE)),
]))


class HFWriter:
    """A Hugging Face dataset as Parquet with inline image bytes (Image features metadata)."""

    embeds_images = True

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.data_dir = os.path.join(out_dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        for old in os.listdir(self.data_dir):  # a re-export replaces the previous files
            if old.startswith("train-") and old.endswith(".parquet"):
                os.remove(os.path.join(self.data_dir, old))
        self.rows: list[dict[str, Any]] = []
        self.files: list[str] = []

    def add(self, rec: dict[str, Any], paths: list[str], images: list[bytes] | None = None) -> None:
        assert images is not None
        self.rows.append({
            "id": rec["id"], "pair_id": rec["pair_id"], "task": rec.get("task"), "subtask": rec.get("subtask"),
            "method": rec["method"], "prompt": rec["prompt"], "instruction": rec["instruction"],
            "images": [{"bytes": b, "path": os.path.basename(p)} for b, p in zip(images, paths)],
            "messages": [{"role": "user", "content": image_tags(len(paths)) + rec["prompt"]},
                         {"role": "assistant", "content": rec["instruction"]}],
        })
        if len(self.rows) >= HF_ROWS_PER_FILE:
            self._flush()

    def _flush(self) -> None:
        if not self.rows and self.files:
            return
        path = os.path.join(self.data_dir, f"train-{len(self.files):05d}.parquet")
        pq.write_table(pa.Table.from_pylist(self.rows, HF_SCHEMA), path + ".tmp", compression="zstd")
        os.replace(path + ".tmp", path)
        self.files.append(path)
        self.rows = []

    def close(self) -> list[str]:
        self._flush()
        card = os.path.join(self.out_dir, "README.md")
        with open(card, "w", encoding="utf-8") as f:
            f.write("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                    "    path: data/train-*.parquet\n---\n\n# acedata instruction-captioner data\n\n"
                    "Curated (pair, instruction) records: `images` holds the inputs in input order, then the "
                    "edited image; `instruction` is the answer to `prompt`. Load with "
                    "`datasets.load_dataset(FOLDER)`.\n")
        return [*self.files, card]


Writer = JsonlWriter | ShareGPTWriter | HFWriter


def open_writer(fmt: str, out_dir: str) -> Writer:
    if fmt in ("internvl", "messages"):
        return JsonlWriter(out_dir, fmt)
    if fmt == "sharegpt":
        return ShareGPTWriter(out_dir)
    if fmt == "hf":
        return HFWriter(out_dir)
    raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
