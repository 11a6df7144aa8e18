"""Pass-2 scorers: inside a turn-1 set, a task-specific score for every member pair.

* `siglip` — cosine similarity of the embeddings already computed (no extra work);
* `object` — object consistency without weights: ORB keypoints matched with Lowe's
  ratio test, then a RANSAC homography; score = inliers / ratio-test matches (0 when
  fewer than `min_inliers` agree). Mirror-aware (a flipped copy is matched too), since
  natural pairs are often mirrored;
* `object_model` — object consistency from DINOv2 patch features (mutual nearest
  neighbours), in `acedata.mining.object_model`, where the weights exist;
* `face` — ArcFace embeddings from insightface where its model pack is on disk;
  otherwise a one-line ModelNotFound (nothing is downloaded).

Sets are capped by the chaining guard, so all-pairs scoring inside one is bounded.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from acedata.errors import ModelNotFound, UserError


@dataclass
class PairScores:
    src: np.ndarray  # local indices into the set, src < dst
    dst: np.ndarray
    score: np.ndarray  # float32, nan where the scorer could not score the pair


def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    from acedata.mining.twopass import upper_pairs

    return upper_pairs(n)


class Scorer:
    name: ClassVar[str]
    needs_images: ClassVar[bool] = False
    default_band: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def setup(self) -> None:
        """Load weights (once per worker)."""

    def score_set(self, emb: np.ndarray, images: list[bytes | None] | None) -> PairScores:
        raise NotImplementedError

    @property
    def model_id(self) -> str:
        return self.name


class SiglipScorer(Scorer):
    name = "siglip"
    default_band = (0.0, 1.0)

    def score_set(self, emb: np.ndarray, images: list[bytes | None] | None) -> PairScores:
        i, j = _upper_pairs(len(emb))
        x = np.asarray(emb, dtype=np.float32)
        return PairScores(i, j, np.einsum("nd,nd->n", x[i], x[j]).astype(np.float32))


class ObjectScorer(Scorer):
    name = "object"
    needs_images = True
    default_band = (0.25, 1.0)

    def __init__(self, max_side: int = 512, nfeatures: int = 500, ratio: float = 0.75,
                 min_inliers: int = 12, mirror: bool = True) -> None:
        self.max_side, self.nfeatures, self.ratio = max_side, nfeatures, ratio
        self.min_inliers, self.mirror = min_inliers, mirror

    @property
    def model_id(self) -> str:
        return f"object:orb{self.nfeatures}+ransac-homography"

    def setup(self) -> None:
        import cv2

        self._cv2 = cv2
        self._orb = cv2.ORB_create(nfeatures=self.nfeatures)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def _features(self, data: bytes | None, flip: bool = False):
        if data is None:
            return None
        from PIL import Image

        im = Image.open(io.BytesIO(data)).convert("L")
        s = self.max_side / max(im.size)
        if s < 1:
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))))
        a = np.asarray(im)
        if flip:
            a = np.ascontiguousarray(a[:, ::-1])
        kps, desc = self._orb.detectAndCompute(a, None)
        if desc is None or len(kps) < self.min_inliers:
            return None
        return np.float32([k.pt for k in kps]), desc

    def _match(self, fa, fb) -> float:
        if fa is None or fb is None:
            return 0.0
        cv2 = self._cv2
        (pa, da), (pb, db) = fa, fb
        knn = self._matcher.knnMatch(da, db, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        if len(good) < self.min_inliers:
            return 0.0
        src = pa[[m.queryIdx for m in good]].reshape(-1, 1, 2)
        dst = pb[[m.trainIdx for m in good]].reshape(-1, 1, 2)
        cv2.setRNGSeed(0)  # RANSAC samples with OpenCV's RNG: seed it so reruns mine the same pairs
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0, maxIters=2000, confidence=0.995)
        if mask is None:
            return 0.0
        inliers = int(mask.sum())
        return inliers / len(good) if inliers >= self.min_inliers else 0.0

    def score_set(self, emb: np.ndarray, images: list[bytes | None] | None) -> PairScores:
        if images is None:
            raise UserError("scorer 'object' needs image bytes: give the pair stage an images table")
        feats = [self._features(b) for b in images]
        flipped = [self._features(b, flip=True) for b in images] if self.mirror else None
        i, j = _upper_pairs(len(images))
        out = np.zeros(len(i), dtype=np.float32)
        for k, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
            s = self._match(feats[a], feats[b])
            if flipped is not None:
                s = max(s, self._match(flipped[a], feats[b]))
            out[k] = s
        return PairScores(i, j, out)


class FaceScorer(Scorer):
    """insightface ArcFace (`buffalo_l` pack by default); cosine of the largest face's
    embeddings; nan for images without a detected face (never linked)."""

    name = "face"
    needs_images = True
    default_band = (0.4, 1.0)

    def __init__(self, pack: str = "buffalo_l", root: str | None = None) -> None:
        self.pack = pack
        self.root = root or os.path.join(os.path.expanduser("~"), ".insightface")

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
        i, j = _upper_pairs(len(images))
        out = np.full(len(i), np.nan, dtype=np.float32)
        for k, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
            if vecs[a] is not None and vecs[b] is not None:
                out[k] = float(vecs[a] @ vecs[b])
        return PairScores(i, j, out)


SCORERS: dict[str, type[Scorer]] = {"siglip": SiglipScorer, "object": ObjectScorer, "face": FaceScorer}
# Scorers in their own modules (heavier imports), loaded when asked for: name -> "module:Class"
LAZY_SCORERS: dict[str, str] = {"object_model": "acedata.mining.object_model:ObjectModelScorer"}


def scorer_class(name: str) -> type[Scorer]:
    if name in SCORERS:
        return SCORERS[name]
    if name in LAZY_SCORERS:
        import importlib

        module, cls = LAZY_SCORERS[name].split(":")
        return getattr(importlib.import_module(module), cls)
    raise UserError(f"unknown scorer {name!r}; known: {', '.join([*SCORERS, *LAZY_SCORERS])}")


def make_scorer(name: str, options: dict | None = None) -> Scorer:
    cls = scorer_class(name)
    try:
        return cls(**(options or {}))
    except TypeError as e:
        raise UserError(f"scorer {name!r}: bad options {options} ({e})") from None
