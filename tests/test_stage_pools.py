"""Any stage that loads a model (or other per-worker state) in `setup` runs as an actor pool."""

from __future__ import annotations

from acedata.pipeline import load_stages
from acedata.stage import Stage

# Stages that choose per config: synthesize (an actor pool only when a model synthesizer or the
# CLIP filter runs; tests/test_synth_models.py) and pair (only with a model scorer).
PER_CONFIG = {"synthesize", "pair"}


def test_stages_with_setup_are_actor_pools():
    stages = load_stages()
    with_setup = {kind for kind, cls in stages.items() if cls.setup is not Stage.setup}
    assert {"embed", "cluster", "instruct", "encode_cache"} <= with_setup
    missing = sorted(k for k in with_setup - PER_CONFIG if not stages[k].uses_model)
    assert missing == [], f"stages loading state in setup but run as tasks: {missing}"
