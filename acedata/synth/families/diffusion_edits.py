"""Edits by diffusers pipelines: InstructPix2Pix (semantic edits), img2img style transfer (SDEdit)
and inpainting for element replacement. They run on GPU actor pools when the stage asks for
GPUs, float16 on CUDA. Knobs in `models.<name>.options` (see each class's Options).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from acedata.synth.base import Draft, Img, mask_img, new_img, register
from acedata.synth.support.diffusers import DiffusersOptions, DiffusersSynth
from acedata.synth.support.masks import object_mask


class InstructPix2PixOptions(DiffusersOptions):
    image_guidance: float = 1.5


class Img2ImgOptions(DiffusersOptions):
    strength: float | None = Field(None, gt=0, le=1)  # None: drawn from [0.45, 0.7] per image


EDIT_PROMPTS = [
    "make it winter with snow", "turn it into an oil painting", "make it night time", "make it look like autumn",
    "make it a vintage photograph", "turn it into a watercolor painting", "make the sky a sunset",
]
STYLE_PROMPTS = ["an oil painting", "a watercolor painting", "a pencil drawing", "an anime illustration",
                 "a pixel art picture", "a charcoal sketch", "a pop art poster"]
OBJECT_PROMPTS = ["a vase of flowers", "a cat", "a wooden chair", "a red ball", "a potted plant", "a lamp"]


@register
class InstructPix2Pix(DiffusersSynth):
    name = "instruct_pix2pix"
    task = "semantic_editing"
    subtasks = ("instruct_edit",)
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    tiny_kind = "instruct_pix2pix"
    algorithm = "diffusers StableDiffusionInstructPix2PixPipeline"
    Options = InstructPix2PixOptions

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        src = self._fit(src)
        prompt = self._prompt(rng, EDIT_PROMPTS)
        image_guidance = self.opts.image_guidance
        out = self._edit(src, prompt, rng, image_guidance_scale=image_guidance)
        params: dict[str, Any] = {"prompt": prompt, "steps": self.steps, "guidance": self.guidance,
                                  "image_guidance": image_guidance}
        return [Draft(self.task, "instruct_edit", src, new_img(out), params=params,
                      synthesizer=self.name, slots={"prompt": prompt})]


@register
class Img2ImgStyle(DiffusersSynth):
    name = "img2img_style"
    task = "semantic_editing"
    subtasks = ("style_transfer",)
    pipeline_class = "StableDiffusionImg2ImgPipeline"
    tiny_kind = "img2img"
    algorithm = "diffusers StableDiffusionImg2ImgPipeline (SDEdit)"
    Options = Img2ImgOptions

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        src = self._fit(src)
        style = self._prompt(rng, STYLE_PROMPTS)
        prompt = f"{style} of {caption}" if caption else style
        # drawn even when fixed, so the generator's later draws do not depend on the option
        drawn = float(rng.uniform(0.45, 0.7))
        strength = self.opts.strength if self.opts.strength is not None else drawn
        out = self._edit(src, prompt, rng, strength=strength)
        params = {"prompt": prompt, "style": style, "strength": round(strength, 3), "steps": self.steps}
        return [Draft(self.task, "style_transfer", src, new_img(out), params=params,
                      synthesizer=self.name, slots={"style": style, "prompt": prompt})]


@register
class InpaintReplace(DiffusersSynth):
    """Replace an object region with a prompted one; pixels outside the mask are pasted back so
    the pair differs only inside the mask (the VAE round trip would otherwise touch all)."""

    name = "sd_inpaint_replace"
    task = "element_editing"
    subtasks = ("replace",)
    pipeline_class = "StableDiffusionInpaintPipeline"
    tiny_kind = "inpaint"
    algorithm = "object mask + diffusers StableDiffusionInpaintPipeline"

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        src = self._fit(src)
        rgb = src.array()
        mask, mparams = object_mask(rgb, rng, max_frac=0.4)
        k = max(3, min(rgb.shape[:2]) // 48) | 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        prompt = self._prompt(rng, OBJECT_PROMPTS)
        h, w = rgb.shape[:2]
        out = self._edit(src, prompt, rng, mask_image=Image.fromarray(mask * 255), height=h, width=w)
        gen = np.asarray(out.convert("RGB"))
        result = np.where(mask[:, :, None] > 0, gen, rgb).astype(np.uint8)
        params = {**mparams, "prompt": prompt, "object": prompt, "steps": self.steps}
        return [Draft(self.task, "replace", src, new_img(result), mask=mask_img(mask), params=params,
                      synthesizer=self.name, slots={"new_object": prompt, "prompt": prompt})]
