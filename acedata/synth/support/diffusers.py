"""The shared base of Stable-Diffusion-family synthesizers: loading a diffusers pipeline (local
folder, HF cache or tiny random-init), fitting the source to the pipeline's size, seeded
generators and prompt choice. Knobs in `models.<name>.options`: steps, guidance, max_side, prompts.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import Field

from acedata.models import ModelSpec, pick_device, resolve_local
from acedata.synth.base import Img, Synthesizer, new_img
from acedata.synth.support.model_loading import ModelOptions, need_spec, torch_dtype


class DiffusersOptions(ModelOptions):
    steps: int = Field(20, ge=1)
    guidance: float = 7.5
    max_side: int = Field(512, ge=8)  # the source is fitted to this long side (multiple of 8)
    prompts: list[str] | None = None  # edit prompts to draw from; None: the synthesizer's own list


class DiffusersSynth(Synthesizer):
    """Shared loading and calling of a Stable-Diffusion-family diffusers pipeline."""

    needs_weights = True
    pipeline_class: str = ""
    tiny_kind: str = ""
    chainable = True
    Options = DiffusersOptions

    def load(self, spec: ModelSpec | None) -> None:
        import diffusers
        import torch

        spec = need_spec(spec, self.name)
        self.opts = opts = self.parse_options(spec)
        self.spec, self.device = spec, pick_device(spec)
        dtype = torch_dtype(spec, self.device)
        if spec.random_init:
            from acedata.synth.support.tiny_models import build_tiny_pipeline

            pipe = build_tiny_pipeline(self.tiny_kind, seed=opts.seed)
        else:
            path = resolve_local(spec, opts.hf_repo)
            pipe = getattr(diffusers, self.pipeline_class).from_pretrained(
                path, dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False)
        self.pipe = pipe.to(self.device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self._torch = torch
        self.steps, self.guidance, self.max_side = opts.steps, opts.guidance, opts.max_side

    @property
    def weights_id(self) -> str | None:
        return self.spec.weights_id if hasattr(self, "spec") else None

    def _fit(self, src: Img) -> Img:
        """The source at a size the pipeline keeps (multiple of 8, long side <= max_side)."""
        w, h = src.pil.size
        s = min(1.0, self.max_side / max(w, h))
        nw, nh = max(8, int(w * s) // 8 * 8), max(8, int(h * s) // 8 * 8)
        if (nw, nh) == (w, h):
            return src
        return new_img(src.pil.convert("RGB").resize((nw, nh), Image.Resampling.LANCZOS), "image",
                       resized_from=src.image_id)

    def _generator(self, rng: np.random.Generator):
        return self._torch.Generator("cpu").manual_seed(int(rng.integers(1 << 31)))

    def _prompt(self, rng: np.random.Generator, default: list[str]) -> str:
        prompts = self.opts.prompts or default
        return str(prompts[int(rng.integers(len(prompts)))])

    def _edit(self, src: Img, prompt: str, rng: np.random.Generator, **pipe_kw) -> Image.Image:
        """The pipeline's output for `src` and `prompt` (the configured steps and guidance, a
        generator seeded from `rng`), at the source's size."""
        out = self.pipe(prompt, image=src.pil.convert("RGB"), num_inference_steps=self.steps,
                        guidance_scale=self.guidance, generator=self._generator(rng), **pipe_kw).images[0]
        return self._same_size(out, src.pil)

    @staticmethod
    def _same_size(out: Image.Image, like: Image.Image) -> Image.Image:
        return out if out.size == like.size else out.resize(like.size, Image.Resampling.LANCZOS)
