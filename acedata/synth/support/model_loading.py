"""Loading model weights for synthesizers: a transformers vision model and its processor from a
local folder or the HF cache (ModelNotFound otherwise, nothing is downloaded), or the tiny
random-init architecture from `tiny_models` when the spec asks for `random_init: true`; and the
object detector that pose and face editing take their boxes from; and the Options those take.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from PIL import Image
from pydantic import AfterValidator, ValidationError

from acedata.config import validate_model, validation_message
from acedata.errors import UserError
from acedata.models import ModelSpec, pick_device, resolve_local
from acedata.synth.base import Options


class ModelOptions(Options):
    """Options every model-backed synthesizer takes."""

    seed: int = 0  # seed of the tiny architecture when the spec says `random_init: true`
    hf_repo: str | None = None  # HF cache repo id, when it differs from the spec's name


def check_detector(spec: ModelSpec | None) -> ModelSpec | None:
    """A detector spec's own options are model options too (checked when the spec loads)."""
    if spec is not None:
        try:
            ModelOptions.model_validate(spec.options)
        except ValidationError as e:
            raise ValueError(validation_message(e, "options")) from None
    return spec


class DetectorOptions(ModelOptions):
    """Synthesizers that find their subjects with an object detector (pose, face editing)."""

    # any transformers object detector with the wanted class
    detector: Annotated[ModelSpec | None, AfterValidator(check_detector)] = None
    detector_labels: list[str] = ["person"]
    detector_threshold: float = 0.5


def torch_dtype(spec: ModelSpec, device: str):
    import torch

    if spec.dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec.dtype]


def need_spec(spec: ModelSpec | None, name: str) -> ModelSpec:
    if spec is None:
        raise UserError(f"synthesizer {name!r} needs weights: set models.{name} (name/path) in the stage")
    return spec


def load_transformers(synth, spec: ModelSpec | None, opts: ModelOptions, auto_model: str, tiny_builder: str,
                      processor: str = "AutoImageProcessor", tiny_kwargs: dict | None = None) -> None:
    """Load a transformers vision model + processor onto `synth` (local path / HF cache, or tiny)."""
    import torch
    import transformers

    spec = need_spec(spec, synth.name)
    synth.spec, synth.device = spec, pick_device(spec)
    if spec.random_init:
        from acedata.synth.support import tiny_models

        model, synth.processor = getattr(tiny_models, tiny_builder)(seed=opts.seed, **(tiny_kwargs or {}))
    else:
        path = resolve_local(spec, opts.hf_repo)
        model = getattr(transformers, auto_model).from_pretrained(path, local_files_only=True)
        synth.processor = getattr(transformers, processor).from_pretrained(path, local_files_only=True)
    synth.model = model.to(synth.device, torch_dtype(spec, synth.device)).eval()
    synth._torch = torch


class ObjectDetector:
    """Boxes of chosen classes (`person`, `face` ...) from a transformers object detector
    (DETR / RT-DETR / YOLOS family, AutoModelForObjectDetection), matched by label name."""

    name = "detector"

    def __init__(self, spec: ModelSpec, labels: list[str], threshold: float = 0.5, where: str = "detector") -> None:
        opts = validate_model(ModelOptions, spec.options, f"{where}.options")
        load_transformers(self, spec, opts, "AutoModelForObjectDetection", "build_tiny_detector",
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
