"""Model loading conventions, shared by every model the platform uses.

Nothing is ever downloaded. A model spec names either a local path (file or
directory), an id already present in the Hugging Face cache, or — only when a spec
asks for it explicitly — a random-init architecture (`random_init: true`) for demos
and tests. Outputs of random-init models are marked "random-init" in provenance.
"""

from __future__ import annotations

import os

from pydantic import Field

from acedata.config import Strict
from acedata.errors import ModelNotFound


class ModelSpec(Strict):
    name: str  # architecture / model id (e.g. an open_clip model name or a HF repo id)
    path: str | None = None  # local checkpoint file or directory
    random_init: bool = False  # build the architecture with random weights (demo/tests)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    options: dict = Field(default_factory=dict)  # model-specific knobs (e.g. tiny config)

    @property
    def weights_id(self) -> str:
        """What produced the outputs, for provenance columns (one spelling: acemodel.config.weights_id)."""
        from acemodel.config import weights_id

        return weights_id(self.name, self.path, self.random_init)


def hf_cache_dirs() -> list[str]:
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    dirs = [os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")]
    return [d for d in dirs if d]


def find_in_hf_cache(repo_id: str) -> str | None:
    """The newest snapshot directory of `repo_id` in the local HF cache, if any."""
    for cache in hf_cache_dirs():
        snap = os.path.join(cache, "models--" + repo_id.replace("/", "--"), "snapshots")
        if os.path.isdir(snap):
            versions = sorted(os.listdir(snap), key=lambda v: os.path.getmtime(os.path.join(snap, v)))
            if versions:
                return os.path.join(snap, versions[-1])
    return None


def resolve_local(spec: ModelSpec, hf_repo: str | None = None) -> str:
    """A local path holding the weights of `spec`, or a ModelNotFound naming where we looked."""
    looked = []
    if spec.path:
        if os.path.exists(spec.path):
            return spec.path
        looked.append(spec.path)
    repo = hf_repo or spec.name
    found = find_in_hf_cache(repo)
    if found:
        return found
    looked.extend(os.path.join(c, "models--" + repo.replace("/", "--")) for c in hf_cache_dirs())
    raise ModelNotFound(
        spec.name, looked, "put the weights there or set `path:` in the spec (nothing is downloaded)"
    )


def pick_device(spec: ModelSpec | str) -> str:
    """The device a model runs on: the spec's (or the given name), "auto" = cuda when visible.

    The one device picker of the data platform (the standalone trainer, model/acemodel, keeps
    its own so it imports nothing from here)."""
    device = spec if isinstance(spec, str) else spec.device
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"
