"""Pose: human keypoints drawn as an OpenPose-style skeleton on black (the condition map), plus
the inverse controllable pair (skeleton -> photo).

Keypoints come from a ViTPose model (transformers `VitPoseForPoseEstimation`, COCO-17, top-down)
loaded from local weights (acedata.models conventions). Person boxes come from an object detector
named in `models.pose.options.detector` (a ModelSpec for any transformers detector with a
`person` class, e.g. RT-DETR); without one the whole image is one box. COCO-17 keypoints are
drawn in the OpenPose-18 layout (the neck is the midpoint of the shoulders) with OpenPose's limb
colours, which is what pose-conditioned generators (ControlNet, ACE's RTMPose-drawn data) expect.

Options (`models.pose.options`): keypoint_threshold (0.3), min_keypoints (4, per person),
detector, detector_labels (["person"]), detector_threshold (0.5), max_people (6).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from acedata.models import ModelSpec
from acedata.synth.base import Rejected, register
from acedata.synth.support.conditions import ConditionSynth
from acedata.synth.support.model_loading import DetectorOptions, ObjectDetector, load_transformers

# OpenPose-18 order: nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip, r-knee,
# r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear. Index into COCO-17 (None: the neck).
OPENPOSE_FROM_COCO: tuple[int | None, ...] = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# Limbs between OpenPose-18 joints, in OpenPose's drawing order (limb k takes colour k).
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
COLOURS = np.array([
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
    [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85],
], np.uint8)
LIMB_SHADE = 0.6  # limbs are drawn darker than joints, as OpenPose renders them


class PoseOptions(DetectorOptions):
    keypoint_threshold: float = 0.3
    min_keypoints: int = Field(4, ge=1)  # per person
    max_people: int = Field(6, ge=1)


class NoPoseFound(Rejected):
    """No person had enough confident keypoints to draw (the candidate goes to quarantine)."""

    reason = "no_pose"


def openpose18(keypoints: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """COCO-17 (x, y) + scores -> 18 x 3 (x, y, visible) in OpenPose order; the neck is visible
    when both shoulders are."""
    out = np.zeros((18, 3), np.float32)
    for j, c in enumerate(OPENPOSE_FROM_COCO):
        if c is None:
            if scores[5] >= threshold and scores[6] >= threshold:
                out[j] = [*((keypoints[5] + keypoints[6]) / 2), 1]
        elif scores[c] >= threshold:
            out[j] = [*keypoints[c], 1]
    return out


def draw_openpose(people: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Skeletons (each 18 x 3 from `openpose18`) as limbs (filled ellipses) and joints (discs) on black.

    Drawn without anti-aliasing, so every pixel is black or one of the OpenPose colours."""
    canvas = np.zeros((height, width, 3), np.uint8)
    stick = max(2, round(4 * min(height, width) / 512))
    for joints in people:
        for k, (a, b) in enumerate(LIMBS):
            if joints[a, 2] == 0 or joints[b, 2] == 0:
                continue
            (xa, ya), (xb, yb) = joints[a, :2], joints[b, :2]
            length = float(np.hypot(xb - xa, yb - ya))
            angle = float(np.degrees(np.arctan2(yb - ya, xb - xa)))
            centre = (round((xa + xb) / 2), round((ya + yb) / 2))
            poly = cv2.ellipse2Poly(centre, (max(1, int(length / 2)), stick), int(angle), 0, 360, 1)
            colour = (COLOURS[k].astype(np.float32) * LIMB_SHADE).astype(np.uint8)
            cv2.fillConvexPoly(canvas, poly, colour.tolist())
        for j in range(18):
            if joints[j, 2]:
                cv2.circle(canvas, (round(joints[j, 0]), round(joints[j, 1])), stick, COLOURS[j].tolist(), -1)
    return canvas


@register
class Pose(ConditionSynth):
    name = "pose"
    subtasks = ("pose",)
    needs_weights = True
    algorithm = "person boxes (detector or whole image) + transformers ViTPose COCO-17 keypoints, OpenPose-18 skeleton"

    Options = PoseOptions

    def load(self, spec: ModelSpec | None) -> None:
        opts = self.parse_options(spec)
        load_transformers(self, spec, opts, "VitPoseForPoseEstimation", "build_tiny_vitpose")
        self.keypoint_threshold, self.min_keypoints, self.max_people = (
            opts.keypoint_threshold, opts.min_keypoints, opts.max_people)
        self.detector = None if opts.detector is None else ObjectDetector(
            opts.detector, opts.detector_labels, opts.detector_threshold, f"models.{self.name}.options.detector")

    @property
    def weights_id(self) -> str | None:
        if not hasattr(self, "spec"):
            return None
        return self.spec.weights_id + (f"+{self.detector.weights_id}" if self.detector else "")

    def person_boxes(self, rgb: np.ndarray) -> tuple[list[list[float]], str]:
        """COCO boxes (x, y, w, h) of the people to pose, and where they came from."""
        h, w = rgb.shape[:2]
        if self.detector is not None:
            found = self.detector.boxes(rgb)[: self.max_people]
            if found:
                return [[x0, y0, x1 - x0, y1 - y0] for (x0, y0, x1, y1), _ in found], "detector"
        return [[0.0, 0.0, float(w), float(h)]], "whole_image"

    def keypoints(self, rgb: np.ndarray, boxes: list[list[float]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(17 x 2 image coordinates, 17 scores) per box."""
        torch = self._torch
        inputs = self.processor(images=Image.fromarray(rgb), boxes=[boxes], return_tensors="pt")
        x = inputs["pixel_values"].to(self.device, self.model.dtype)
        extra = {}
        if getattr(self.model.config.backbone_config, "num_experts", 1) > 1:  # ViTPose++: expert 0 is COCO
            extra["dataset_index"] = torch.zeros(x.shape[0], dtype=torch.long, device=self.device)
        with torch.no_grad():
            out = self.model(pixel_values=x, **extra)
        out.heatmaps = out.heatmaps.float()
        people = self.processor.post_process_pose_estimation(out, boxes=[boxes])[0]
        return [(p["keypoints"].numpy().astype(np.float32), p["scores"].numpy().reshape(-1).astype(np.float32))
                for p in people]

    def condition(self, rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        h, w = rgb.shape[:2]
        boxes, box_source = self.person_boxes(rgb)
        skeletons, visible = [], []
        for kps, scores in self.keypoints(rgb, boxes):
            joints = openpose18(kps, scores, self.keypoint_threshold)
            inside = (joints[:, 0] >= 0) & (joints[:, 0] < w) & (joints[:, 1] >= 0) & (joints[:, 1] < h)
            joints[~inside, 2] = 0
            if int(joints[:, 2].sum()) >= self.min_keypoints:
                skeletons.append(joints)
                visible.append(int(joints[:, 2].sum()))
        if not skeletons:
            raise NoPoseFound(f"no person with >= {self.min_keypoints} keypoints above {self.keypoint_threshold}")
        params = {"people": len(skeletons), "keypoints_visible": visible, "boxes": box_source,
                  "keypoint_threshold": self.keypoint_threshold, "model": self.spec.weights_id,
                  "format": "openpose18 from coco17"}
        return draw_openpose(skeletons, h, w), params
