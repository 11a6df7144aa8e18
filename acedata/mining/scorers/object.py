"""`object`: object consistency without weights, for pass 2.

ORB keypoints matched with Lowe's ratio test, then a RANSAC homography; score =
inliers / ratio-test matches (0 when fewer than `min_inliers` agree). Mirror-aware (a
flipped copy is matched too), since natural pairs are often mirrored. Sets are capped by
the chaining guard, so all-pairs scoring inside one is bounded.
"""

from __future__ import annotations

import io

import numpy as np
from pydantic import Field

from acedata.config import Strict
from acedata.errors import UserError
from acedata.mining.pairs import upper_pairs
from acedata.mining.scorers.base import PairScores, Scorer, register_scorer


class ObjectOptions(Strict):
    max_side: int = Field(512, ge=16)  # images are resized so their long side is at most this
    nfeatures: int = Field(500, ge=1)  # ORB keypoints per image
    ratio: float = Field(0.75, gt=0, le=1)  # Lowe's ratio test
    min_inliers: int = Field(12, ge=4)
    mirror: bool = True  # also match a flipped copy (natural pairs are often mirrored)


@register_scorer
class ObjectScorer(Scorer):
    name = "object"
    Options = ObjectOptions
    needs_images = True
    default_band = (0.25, 1.0)

    def __init__(self, options: ObjectOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.max_side, self.nfeatures, self.ratio = o.max_side, o.nfeatures, o.ratio
        self.min_inliers, self.mirror = o.min_inliers, o.mirror

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
        i, j = upper_pairs(len(images))
        out = np.zeros(len(i), dtype=np.float32)
        for k, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
            s = self._match(feats[a], feats[b])
            if flipped is not None:
                s = max(s, self._match(flipped[a], feats[b]))
            out[k] = s
        return PairScores(i, j, out)
