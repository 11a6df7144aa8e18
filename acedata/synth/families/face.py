"""Facial attribute editing (semantic editing, subtask `facial_attribute`): an InstructPix2Pix
edit ("make the person smile", "add glasses" ...) applied to the face region.

`region: face` (default) finds faces with an object detector named in
`models.facial_attribute.options.detector` (any transformers detector with a `face` class);
the face box, grown by `face_margin` to take in hair and chin, is cut out, edited at the
pipeline's resolution and pasted back with a feathered edge that stays inside the box, so
every pixel outside the box is the source's. `region: whole` edits the whole image. The
attribute (a phrase such as "smiling") and the edit prompt go in the pair's params for the
instruction templates (`{attribute}`, `{prompt}`).

Options: region, detector, detector_labels (["face"]), detector_threshold (0.5), face_margin
(0.35), min_face (0.02 of the image area), attributes (a list of {attribute, prompt} or of
prompts), plus the diffusers knobs (steps, guidance, image_guidance, max_side).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import AfterValidator, Field

from acedata.errors import UserError
from acedata.models import ModelSpec
from acedata.synth.base import Draft, Img, Rejected, new_img, register
from acedata.synth.support.diffusers import DiffusersOptions, DiffusersSynth
from acedata.synth.support.model_loading import ObjectDetector, check_detector

# (attribute as a state, for "make the person in {image} <attribute>"; the edit prompt)
FACE_ATTRIBUTES: list[tuple[str, str]] = [
    ("smiling", "make the person smile"),
    ("wearing glasses", "add glasses"),
    ("grey-haired", "make the hair grey"),
    ("older", "make the person look older"),
    ("younger", "make the person look younger"),
    ("bearded", "give the person a beard"),
    ("blond", "make the hair blond"),
    ("surprised", "make the person look surprised"),
    ("wearing red lipstick", "add red lipstick"),
]


class FaceOptions(DiffusersOptions):
    region: Literal["face", "whole"] = "face"
    attributes: list[str | dict[str, str]] | None = None  # prompts, or {attribute, prompt}
    face_margin: float = Field(0.35, ge=0)
    min_face: float = Field(0.02, ge=0, le=1)  # of the image area
    image_guidance: float = 1.5
    detector: Annotated[ModelSpec | None, AfterValidator(check_detector)] = None  # a `face` class (region: face)
    detector_labels: list[str] = ["face"]
    detector_threshold: float = 0.5


class NoFaceFound(Rejected):
    """The detector found no face large enough to edit (the candidate goes to quarantine)."""

    reason = "no_face"


def _attributes(raw: Any) -> list[tuple[str, str]]:
    if not raw:
        return FACE_ATTRIBUTES
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append((item, item))
        elif isinstance(item, dict) and "prompt" in item:
            out.append((str(item.get("attribute", item["prompt"])), str(item["prompt"])))
        else:
            raise UserError(f"facial_attribute: attributes entries are prompts or {{attribute, prompt}}, got {item!r}")
    return out


def grow_box(box: list[float], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown by `margin` of its size on every side (more upwards, for hair), clipped."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    gx0, gy0 = int(max(0, x0 - margin * bw)), int(max(0, y0 - 1.3 * margin * bh))
    gx1, gy1 = int(min(width, np.ceil(x1 + margin * bw))), int(min(height, np.ceil(y1 + 0.7 * margin * bh)))
    return gx0, gy0, gx1, gy1


def feather(h: int, w: int, ramp: int) -> np.ndarray:
    """An h x w alpha in [0, 1]: 0 on the border, rising linearly to 1 at `ramp` pixels inside."""
    if ramp <= 0:
        return np.ones((h, w), np.float32)
    ys = np.minimum(np.arange(h), np.arange(h)[::-1]).astype(np.float32)
    xs = np.minimum(np.arange(w), np.arange(w)[::-1]).astype(np.float32)
    return np.clip(np.minimum(ys[:, None], xs[None, :]) / ramp, 0, 1)


@register
class FacialAttribute(DiffusersSynth):
    name = "facial_attribute"
    task = "semantic_editing"
    subtasks = ("facial_attribute",)
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    tiny_kind = "instruct_pix2pix"
    algorithm = "face detector box + diffusers StableDiffusionInstructPix2PixPipeline, pasted back"
    Options = FaceOptions

    def load(self, spec: ModelSpec | None) -> None:
        super().load(spec)
        opts = self.opts
        self.region = opts.region
        self.attributes = _attributes(opts.attributes)
        self.margin, self.min_face, self.image_guidance = opts.face_margin, opts.min_face, opts.image_guidance
        self.detector = None
        if self.region == "face":
            if opts.detector is None:
                raise UserError("facial_attribute: region face needs options.detector (a face detector spec); "
                                "or set options.region: whole")
            self.detector = ObjectDetector(opts.detector, opts.detector_labels, opts.detector_threshold,
                                           f"models.{self.name}.options.detector")

    @property
    def weights_id(self) -> str | None:
        if not hasattr(self, "spec"):
            return None
        return self.spec.weights_id + (f"+{self.detector.weights_id}" if self.detector else "")

    def _edit(self, pil: Image.Image, prompt: str, rng: np.random.Generator) -> Image.Image:
        out = self.pipe(prompt, image=pil.convert("RGB"), num_inference_steps=self.steps, guidance_scale=self.guidance,
                        image_guidance_scale=self.image_guidance, generator=self._generator(rng)).images[0]
        return self._same_size(out, pil)

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        attribute, prompt = self.attributes[int(rng.integers(len(self.attributes)))]
        params: dict[str, Any] = {"attribute": attribute, "prompt": prompt, "region": self.region,
                                  "steps": self.steps, "guidance": self.guidance,
                                  "image_guidance": self.image_guidance}
        if self.region == "whole":
            src = self._fit(src)
            target = new_img(self._edit(src.pil, prompt, rng))
            return [Draft(self.task, "facial_attribute", src, target, params=params, synthesizer=self.name,
                          slots={"attribute": attribute, "prompt": prompt})]
        rgb = src.array()
        h, w = rgb.shape[:2]
        faces = [(b, s) for b, s in self.detector.boxes(rgb)
                 if (b[2] - b[0]) * (b[3] - b[1]) >= self.min_face * h * w]
        if not faces:
            raise NoFaceFound(f"no face covering >= {self.min_face} of the image")
        box, score = faces[0]  # the most confident face
        x0, y0, x1, y1 = grow_box(box, self.margin, w, h)
        # The crop is edited at the pipeline's working size (faces are often small: scaled up).
        cw, ch = x1 - x0, y1 - y0
        s = self.max_side / max(cw, ch)
        size = (max(8, round(cw * s / 8) * 8), max(8, round(ch * s / 8) * 8))
        crop = Image.fromarray(rgb[y0:y1, x0:x1]).resize(size, Image.Resampling.LANCZOS)
        edited = np.asarray(self._edit(crop, prompt, rng).convert("RGB")
                            .resize((cw, ch), Image.Resampling.LANCZOS)).astype(np.float32)
        alpha = feather(y1 - y0, x1 - x0, max(1, min(y1 - y0, x1 - x0) // 10))[:, :, None]
        out = rgb.copy()
        region = rgb[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(edited * alpha + region * (1 - alpha) + 0.5, 0, 255).astype(np.uint8)
        params.update(face_box=[round(v, 1) for v in box], face_score=round(score, 4), edit_box=[x0, y0, x1, y1])
        return [Draft(self.task, "facial_attribute", src, new_img(out), params=params, synthesizer=self.name,
                      slots={"attribute": attribute, "prompt": prompt})]
