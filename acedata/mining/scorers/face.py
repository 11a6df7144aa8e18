"""`face`: identity similarity for pass 2, from insightface ArcFace embeddings.

Where the model pack is on disk; otherwise a one-line ModelNotFound (nothing is downloaded).
"""

from __future__ import annotations

import io
import os

import numpy as np

from acedata.config import Strict
from acedata.errors import ModelNotFound, UserError
from acedata.mining.pairs import upper_pairs
from acedata.mining.scorers.base import PairScores, Scorer, register_scorer


class FaceOptions(Strict):
    pack: str = "buffalo_l"  # insightface model pack name
    root: str | None = None  # where packs live (default ~/.insightface)


@register_scorer
class FaceScorer(Scorer):
    """insightface ArcFace (`buffalo_l` pack by default); cosine of the largest face's
    embeddings; nan for images without a detected face (never linked)."""

    name = "face"
    Options = FaceOptions
    needs_images = True
    loads_model = True
    default_band = (0.4, 1.0)

    def __init__(self, options: FaceOptions | None = None) -> None:
        super().__init__(options)
        self.pack = self.options.pack
        self.root = self.options.root or os.path.join(os.path.expanduser("~"), ".insightface")

    @property
    def model_id(self) -> str:
        return f"face:insightface/{self.pack}"

    def setup(self) -> None:
        where = os.path.join(self.root, "models", self.pack)
        try:
            from insightface.app import FaceAnalysis
        except ImportError:
            raise ModelNotFound(f"insightface/{self.pack}", where,
                                "the face scorer needs `pip install insightface onnxruntime` and the model pack "
                                "unpacked there") from None
        if not os.path.isdir(where) or not any(f.endswith(".onnx") for f in os.listdir(where)):
            raise ModelNotFound(f"insightface/{self.pack}", where, "unpack the model pack there (nothing is downloaded)")
        self._app = FaceAnalysis(name=self.pack, root=self.root, allowed_modules=["detection", "recognition"],
                                 providers=["CPUExecutionProvider"])
        self._app.prepare(ctx_id=-1, det_size=(640, 640))

    def _embed(self, data: bytes | None) -> np.ndarray | None:
        if data is None:
            return None
        from PIL import Image

        bgr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[:, :, ::-1].copy()
        faces = self._app.get(bgr)
        if not faces:
            return None
        face = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        return face.normed_embedding.astype(np.float32)

    def score_set(self, emb: np.ndarray, images: list[bytes | None] | None) -> PairScores:
        if images is None:
            raise UserError("scorer 'face' needs image bytes: give the pair stage an images table")
        vecs = [self._embed(b) for b in images]
        i, j = upper_pairs(len(images))
        out = np.full(len(i), np.nan, dtype=np.float32)
        for k, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
            if vecs[a] is not None and vecs[b] is not None:
                out[k] = float(vecs[a] @ vecs[b])
        return PairScores(i, j, out)
