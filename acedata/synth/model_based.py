"""Model-based synthesizers: depth (DPT/MiDaS via transformers), semantic segmentation
(SegFormer-family via transformers) and diffusers edit pipelines
(InstructPix2Pix, img2img style transfer, inpainting for element replacement).

Weights come from a local folder or the HF cache through `acedata.models` (ModelNotFound
otherwise, nothing is downloaded); `random_init: true` builds the tiny architecture from
`acedata.synth.tiny_models` and marks outputs random-init. They run on GPU actor pools
when the stage asks for GPUs (`resources: {num_gpus: 1}`), float16 on CUDA.
Knobs in `models.<name>.options`: steps, guidance, strength, max_side, prompts.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image

from acedata.errors import UserError
from acedata.models import ModelSpec, pick_device, resolve_local
from acedata.synth.base import Draft, Img, Synthesizer, as_rgb3, mask_img, new_img, register
from acedata.synth.lowlevel import ConditionSynth
from acedata.synth.segments import object_mask


def _torch_dtype(spec: ModelSpec, device: str):
    import torch

    if spec.dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec.dtype]


def _need(spec: ModelSpec | None, name: str) -> ModelSpec:
    if spec is None:
        raise UserError(f"synthesizer {name!r} needs weights: set models.{name} (name/path) in the stage")
    return spec


def _load_transformers(synth, spec: ModelSpec | None, auto_model: str, tiny_builder: str,
                       processor: str = "AutoImageProcessor", tiny_kwargs: dict | None = None) -> None:
    """Load a transformers vision model + processor onto `synth` (local path / HF cache, or tiny)."""
    import torch
    import transformers

    spec = _need(spec, synth.name)
    synth.spec, synth.device = spec, pick_device(spec)
    if spec.random_init:
        from acedata.synth import tiny_models

        model, synth.processor = getattr(tiny_models, tiny_builder)(seed=int(spec.options.get("seed", 0)),
                                                                    **(tiny_kwargs or {}))
    else:
        path = resolve_local(spec, spec.options.get("hf_repo"))
        model = getattr(transformers, auto_model).from_pretrained(path, local_files_only=True)
        synth.processor = getattr(transformers, processor).from_pretrained(path, local_files_only=True)
    synth.model = model.to(synth.device, _torch_dtype(spec, synth.device)).eval()
    synth._torch = torch


def sub_spec(spec: ModelSpec, key: str) -> ModelSpec | None:
    """A second model named inside a synthesizer's options (e.g. `options.detector`), as a ModelSpec."""
    raw = spec.options.get(key)
    if raw is None or isinstance(raw, ModelSpec):
        return raw
    if not isinstance(raw, dict):
        raise UserError(f"models.{spec.name}.options.{key} must be a model spec (name/path), got {raw!r}")
    return ModelSpec(**raw)


class ObjectDetector:
    """Boxes of chosen classes (`person`, `face` ...) from a transformers object detector
    (DETR / RT-DETR / YOLOS family, AutoModelForObjectDetection), matched by label name."""

    name = "detector"

    def __init__(self, spec: ModelSpec, labels: list[str], threshold: float = 0.5) -> None:
        _load_transformers(self, spec, "AutoModelForObjectDetection", "build_tiny_detector",
                           tiny_kwargs={"labels": tuple(labels)})
        names = {int(k): str(v).lower() for k, v in self.model.config.id2label.items()}
        self.label_ids = {i for i, n in names.items() if n in {lab.lower() for lab in labels}}
        if not self.label_ids:
            raise UserError(f"detector {spec.name!r} has no class named {labels} (it knows "
                            f"{sorted(set(names.values()))[:12]}); set detector_labels")
        self.threshold = threshold

    @property
    def weights_id(self) -> str:
        return self.spec.weights_id

    def boxes(self, rgb: np.ndarray) -> list[tuple[list[float], float]]:
        """[(x0, y0, x1, y1), score] of the wanted classes, best first."""
        torch = self._torch
        h, w = rgb.shape[:2]
        x = self.processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model(pixel_values=x.to(self.device, self.model.dtype))
        out.logits, out.pred_boxes = out.logits.float(), out.pred_boxes.float()
        det = self.processor.post_process_object_detection(out, threshold=self.threshold, target_sizes=[(h, w)])[0]
        found = []
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            x0, y0, x1, y1 = max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])
            if int(label) in self.label_ids and x1 - x0 >= 2 and y1 - y0 >= 2:
                found.append(([x0, y0, x1, y1], float(score)))
        # Set-prediction detectors have no NMS; queries that found the same object are merged here.
        kept: list[tuple[list[float], float]] = []
        for box, score in sorted(found, key=lambda b: -b[1]):
            if all(_iou(box, k) < 0.7 for k, _ in kept):
                kept.append((box, score))
        return kept


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ModelMasker:
    """Object/region masks from a model, for repainting, element removal and layer alpha.

    `mask_model: segmentation` (default) takes one class region of a semantic segmenter (the
    `segmentation_model` synthesizer's models: SegFormer, UperNet ...), its class name kept as
    the object; `mask_model: sam` prompts a SAM-family model (transformers SamModel: SAM,
    SlimSAM) with a random point and keeps its best-scored mask within the area bounds."""

    name = "mask_model"

    def __init__(self, spec: ModelSpec) -> None:
        self.kind = str(spec.options.get("mask_model", "segmentation"))
        if self.kind == "sam":
            _load_transformers(self, spec, "SamModel", "build_tiny_sam", processor="SamProcessor")
        elif self.kind == "segmentation":
            _load_transformers(self, spec, "AutoModelForSemanticSegmentation", "build_tiny_segformer")
        else:
            raise UserError(f"models.{spec.name}.options.mask_model must be segmentation or sam, got {self.kind!r}")
        self.points = int(spec.options.get("sam_points", 4))  # prompts tried per image (SAM)

    @property
    def weights_id(self) -> str:
        return self.spec.weights_id

    def mask(self, rgb: np.ndarray, rng: np.random.Generator, min_frac: float,
             max_frac: float) -> tuple[np.ndarray, dict[str, Any]] | None:
        """A binary (0/1) mask whose area lies in [min_frac, max_frac], or None."""
        if self.kind == "sam":
            return self._sam(rgb, rng, min_frac, max_frac)
        return self._segmentation(rgb, rng, min_frac, max_frac)

    def _segmentation(self, rgb, rng, min_frac, max_frac):
        torch = self._torch
        x = self.processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = self.model(pixel_values=x.to(self.device, self.model.dtype)).logits
        up = torch.nn.functional.interpolate(logits.float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)
        labels = up.argmax(1)[0].cpu().numpy()
        # Connected regions of one class, so a mask is one object rather than every pixel of a class.
        regions = []
        for cls in np.unique(labels):
            n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == cls).astype(np.uint8), connectivity=8)
            for k in range(1, n):
                frac = stats[k, cv2.CC_STAT_AREA] / labels.size
                if min_frac <= frac <= max_frac:
                    regions.append((int(cls), k, comp))
        if not regions:
            return None
        cls, k, comp = regions[int(rng.integers(len(regions)))]
        names = getattr(self.model.config, "id2label", {}) or {}
        label = str(names.get(cls, names.get(str(cls), "")))
        mask = (comp == k).astype(np.uint8)
        params = {"method": "segmentation_model", "model": self.spec.weights_id, "class_id": cls,
                  "segment_frac": round(float(mask.mean()), 4)}
        if label and not label.startswith("LABEL_"):  # a real class name names the object in instructions
            params["object"] = label
        return mask, params

    def _sam(self, rgb, rng, min_frac, max_frac):
        torch = self._torch
        h, w = rgb.shape[:2]
        pts = [[float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h)] for _ in range(self.points)]
        # One point prompt per candidate object: input_points [image, prompt, points, xy].
        inputs = self.processor(images=Image.fromarray(rgb), input_points=[[[p] for p in pts]], return_tensors="pt")
        with torch.no_grad():
            out = self.model(pixel_values=inputs["pixel_values"].to(self.device, self.model.dtype),
                             input_points=inputs["input_points"].to(self.device, self.model.dtype),
                             multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"])[0].numpy()
        scores = out.iou_scores.float().cpu().numpy()[0]  # [prompt, mask]
        best = None
        for p in range(masks.shape[0]):
            for m in range(masks.shape[1]):
                frac = float(masks[p, m].mean())
                if min_frac <= frac <= max_frac and (best is None or scores[p, m] > best[0]):
                    best = (float(scores[p, m]), p, m)
        if best is None:
            return None
        score, p, m = best
        mask = masks[p, m].astype(np.uint8)
        return mask, {"method": "sam", "model": self.spec.weights_id, "point": [round(v, 1) for v in pts[p]],
                      "iou_score": round(score, 4), "segment_frac": round(float(mask.mean()), 4)}


@register
class Depth(ConditionSynth):
    """Monocular relative depth (brighter = nearer), normalised per image, as MiDaS/DPT maps."""

    name = "depth"
    subtasks = ("depth",)
    needs_weights = True
    num_gpus = 0.25
    algorithm = "transformers AutoModelForDepthEstimation (DPT / MiDaS family)"
    default_repo = "Intel/dpt-hybrid-midas"

    def load(self, spec: ModelSpec | None) -> None:
        _load_transformers(self, spec, "AutoModelForDepthEstimation", "build_tiny_dpt")

    @property
    def weights_id(self) -> str | None:
        return self.spec.weights_id if hasattr(self, "spec") else None

    def condition(self, rgb, rng):
        torch = self._torch
        inputs = self.processor(images=Image.fromarray(rgb), return_tensors="pt")
        x = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.no_grad():
            depth = self.model(pixel_values=x).predicted_depth
        d = torch.nn.functional.interpolate(depth[:, None].float(), size=rgb.shape[:2], mode="bicubic",
                                            align_corners=False)[0, 0].cpu().numpy()
        lo, hi = np.percentile(d, 1), np.percentile(d, 99)
        d = np.clip((d - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(d)
        return as_rgb3((d * 255).astype(np.uint8)), {"model": self.spec.weights_id}


@register
class SegmentationModel(ConditionSynth):
    """Semantic segmentation colour map from a model (SegFormer / UperNet / DPT heads): one fixed
    palette colour per class, so a class keeps its colour across images."""

    name = "segmentation_model"
    subtasks = ("segmentation",)
    needs_weights = True
    num_gpus = 0.25
    algorithm = "transformers AutoModelForSemanticSegmentation"

    def load(self, spec: ModelSpec | None) -> None:
        _load_transformers(self, spec, "AutoModelForSemanticSegmentation", "build_tiny_segformer")

    @property
    def weights_id(self) -> str | None:
        return self.spec.weights_id if hasattr(self, "spec") else None

    def condition(self, rgb, rng):
        from acedata.synth.lowlevel import palette

        torch = self._torch
        x = self.processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = self.model(pixel_values=x.to(self.device, self.model.dtype)).logits
        up = torch.nn.functional.interpolate(logits.float(), size=rgb.shape[:2], mode="bilinear",
                                             align_corners=False)
        labels = up.argmax(1)[0].cpu().numpy()
        colours = palette(int(logits.shape[1]))
        return colours[labels], {"model": self.spec.weights_id, "classes": len(np.unique(labels))}


class DiffusersSynth(Synthesizer):
    """Shared loading and calling of a Stable-Diffusion-family diffusers pipeline."""

    needs_weights = True
    num_gpus = 1.0
    pipeline_class: str = ""
    tiny_kind: str = ""
    chainable = True

    def load(self, spec: ModelSpec | None) -> None:
        import diffusers
        import torch

        spec = _need(spec, self.name)
        self.spec, self.device = spec, pick_device(spec)
        dtype = _torch_dtype(spec, self.device)
        if spec.random_init:
            from acedata.synth.tiny_models import build_tiny_pipeline

            pipe = build_tiny_pipeline(self.tiny_kind, seed=int(spec.options.get("seed", 0)))
        else:
            path = resolve_local(spec, spec.options.get("hf_repo"))
            pipe = getattr(diffusers, self.pipeline_class).from_pretrained(
                path, dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False)
        self.pipe = pipe.to(self.device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self._torch = torch
        opts = spec.options
        self.steps = int(opts.get("steps", 20))
        self.guidance = float(opts.get("guidance", 7.5))
        self.max_side = int(opts.get("max_side", 512))

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
        prompts = self.spec.options.get("prompts") or default
        return str(prompts[int(rng.integers(len(prompts)))])

    @staticmethod
    def _same_size(out: Image.Image, like: Image.Image) -> Image.Image:
        return out if out.size == like.size else out.resize(like.size, Image.Resampling.LANCZOS)


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

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        src = self._fit(src)
        prompt = self._prompt(rng, EDIT_PROMPTS)
        image_guidance = float(self.spec.options.get("image_guidance", 1.5))
        out = self.pipe(prompt, image=src.pil.convert("RGB"), num_inference_steps=self.steps,
                        guidance_scale=self.guidance, image_guidance_scale=image_guidance,
                        generator=self._generator(rng)).images[0]
        params: dict[str, Any] = {"prompt": prompt, "steps": self.steps, "guidance": self.guidance,
                                  "image_guidance": image_guidance}
        return [Draft(self.task, "instruct_edit", src, new_img(self._same_size(out, src.pil)), params=params,
                      synthesizer=self.name)]


@register
class Img2ImgStyle(DiffusersSynth):
    name = "img2img_style"
    task = "semantic_editing"
    subtasks = ("style_transfer",)
    pipeline_class = "StableDiffusionImg2ImgPipeline"
    tiny_kind = "img2img"
    algorithm = "diffusers StableDiffusionImg2ImgPipeline (SDEdit)"

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        src = self._fit(src)
        style = self._prompt(rng, STYLE_PROMPTS)
        prompt = f"{style} of {caption}" if caption else style
        strength = float(self.spec.options.get("strength", rng.uniform(0.45, 0.7)))
        out = self.pipe(prompt, image=src.pil.convert("RGB"), strength=strength, num_inference_steps=self.steps,
                        guidance_scale=self.guidance, generator=self._generator(rng)).images[0]
        params = {"prompt": prompt, "style": style, "strength": round(strength, 3), "steps": self.steps}
        return [Draft(self.task, "style_transfer", src, new_img(self._same_size(out, src.pil)), params=params,
                      synthesizer=self.name)]


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
        out = self.pipe(prompt, image=src.pil.convert("RGB"), mask_image=Image.fromarray(mask * 255),
                        height=h, width=w, num_inference_steps=self.steps, guidance_scale=self.guidance,
                        generator=self._generator(rng)).images[0]
        gen = np.asarray(self._same_size(out, src.pil).convert("RGB"))
        result = np.where(mask[:, :, None] > 0, gen, rgb).astype(np.uint8)
        params = {**mparams, "prompt": prompt, "object": prompt, "steps": self.steps}
        return [Draft(self.task, "replace", src, new_img(result), mask=mask_img(mask), params=params,
                      synthesizer=self.name)]
