"""Pass-2 scorers, one module each; importing the package registers them all.

* `siglip` — cosine of the embeddings already computed (no extra work);
* `object` — weight-free object consistency (ORB + RANSAC homography);
* `object_model` — object consistency from DINOv2 patch features;
* `face` — ArcFace identity similarity (insightface).

Heavy imports (OpenCV, torch, transformers, insightface) happen in `setup`, so listing
or validating scorers stays cheap.
"""

from acedata.mining.scorers import face, object, object_model, siglip  # noqa: F401  (register)
from acedata.mining.scorers.base import (
    SCORERS,
    PairScores,
    Scorer,
    make_scorer,
    register_scorer,
    scorer_class,
    scorer_options,
)

__all__ = ["SCORERS", "PairScores", "Scorer", "make_scorer", "register_scorer", "scorer_class", "scorer_options"]
