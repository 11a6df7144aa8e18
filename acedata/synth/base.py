"""What a synthesizer is and what it makes.

A synthesizer turns one source image (or, for reference generation, a set of images of
one subject) into draft pairs: source, target, optional mask and further inputs. Each
declares its task family, subtasks, input kind, whether it needs model weights and the
options its model spec takes. GPUs are the synthesize stage's `resources` (one actor pool). Drafts carry pixels; the synthesize stage content-addresses
them, filters them and writes the `images` and `pairs` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from acedata.config import Strict, validate_model
from acedata.images import pixel_id
from acedata.schemas import SLOTS as SLOTS_TYPE

MASK_FILL_GRAY = 128  # masked source pixels: mid-gray = 0 in the [-1, 1] input the DiT sees


@dataclass
class Img:
    """An image taking part in a pair: pixels plus its table id when it already has a row."""

    pil: Image.Image
    kind: str = "image"  # image | mask | condition
    image_id: str | None = None  # set for images already in an images table
    meta: dict[str, Any] = field(default_factory=dict)
    # Pixels as arrays, made once: every synthesizer a photo gets, every filter and definition
    # check reads the same read-only arrays instead of converting the image again.
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def id(self) -> str:
        """The content address, in the scheme of the running stage's run (`acedata.ids.current`)."""
        if self.image_id is None:
            self.image_id = pixel_id(self.pil, self._arrays.get(self.pil.mode))
        return self.image_id

    @property
    def is_new(self) -> bool:
        return bool(self.meta.get("_new", False))

    def as_mode(self, mode: str) -> np.ndarray:
        """The pixels in a Pillow mode (RGB, L, RGBA ...) as a read-only uint8 array, cached."""
        a = self._arrays.get(mode)
        if a is None:
            a = np.asarray(self.pil if self.pil.mode == mode else self.pil.convert(mode))
            a.flags.writeable = False
            self._arrays[mode] = a
        return a

    def array(self) -> np.ndarray:
        """HxWx3 uint8 RGB (masks: HxW uint8), read-only."""
        return self.as_mode("L" if self.kind == "mask" else "RGB")


def new_img(arr_or_pil: np.ndarray | Image.Image, kind: str = "image", **meta: Any) -> Img:
    """An image this synthesizer made (gets its own images row)."""
    if isinstance(arr_or_pil, Image.Image):
        return Img(arr_or_pil, kind, None, {"_new": True, **meta})
    a = np.ascontiguousarray(arr_or_pil, np.uint8)
    if a is arr_or_pil and (a.flags.writeable or not a.flags.owndata):
        a = a.copy()  # the image owns its pixels: the caller may reuse its array
    # else a read-only array that owns its pixels (a memoised map, `pixels._memo`): nobody writes
    # to it, so the image shares it, and the definition check finds the very array it defines
    mode = "L" if a.ndim == 2 else "RGBA" if a.shape[2] == 4 else "RGB"
    a.flags.writeable = False
    img = Img(Image.fromarray(a, mode), kind, None, {"_new": True, **meta})
    img._arrays[mode] = a  # filters and the content address read these pixels without a conversion
    return img


def mask_img(mask: np.ndarray) -> Img:
    """A binary mask image: 255 = region to edit, 0 = keep (the schema's convention)."""
    return new_img(np.where(mask > 0, 255, 0).astype(np.uint8), "mask")


# The template slots a synthesizer may fill (acedata/instruct/templates/*.yaml use them as {name}).
SLOTS = tuple(f.name for f in SLOTS_TYPE)


def slot_text(value: Any) -> str:
    """A slot value as template text: underscores to spaces, single spaces, no final period."""
    return " ".join(str(value).replace("_", " ").split()).rstrip(".")


@dataclass
class Draft:
    task: str
    subtask: str
    source: Img
    target: Img
    mask: Img | None = None
    extras: list[Img] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    synthesizer: str = ""
    parent: Draft | None = None  # the draft whose target this edit was applied to
    # template slot values (keys from SLOTS) stated by the synthesizer; written to the pairs
    # table's `slots` column, which the instruct stage fills templates from
    slots: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.slots) - set(SLOTS)
        if unknown:
            raise ValueError(f"unknown template slots {sorted(unknown)}; known: {SLOTS}")
        self.slots = {k: slot_text(v) for k, v in self.slots.items() if str(v).strip()}


class Rejected(Exception):
    """Raised by `make` when this input cannot give a pair (no face, no person found...).

    The candidate is quarantined with `reason`; any other exception is a failing synthesizer,
    which the synthesize stage counts and, past a bounded rate, fails the unit on."""

    reason = "synth_rejected"


class Options(Strict):
    """A synthesizer's `models.<name>.options`. Each synthesizer names its own subclass in
    `Options`; unknown keys and bad values are errors when the pipeline spec is loaded.
    Weight-free synthesizers take none."""


class Synthesizer:
    """One algorithm or model that makes pairs of one task family."""

    name: ClassVar[str]
    task: ClassVar[str]  # family of the main pair (the paper's names)
    subtasks: ClassVar[tuple[str, ...]]
    inverse_task: ClassVar[str | None] = None  # family of the inverse pair it also makes, if any
    inputs: ClassVar[str] = "image"  # image: one source image | group: images of one subject
    needs_weights: ClassVar[bool] = False
    chainable: ClassVar[bool] = False  # can edit an earlier edit's target (multi-turn chains)
    algorithm: ClassVar[str] = ""  # what produced the pixels, for provenance
    Options: ClassVar[type[Options]] = Options

    @classmethod
    def parse_options(cls, spec: Any | None) -> Options:
        """The spec's `options` as this synthesizer's Options (UserError naming the bad key)."""
        raw = spec.options if spec is not None else {}
        return validate_model(cls.Options, raw, f"models.{cls.name}.options")  # type: ignore[return-value]

    def load(self, spec: Any | None) -> None:
        """Load model weights (model synthesizers); weight-free ones need nothing."""

    @property
    def weights_id(self) -> str | None:
        return None

    def make(self, src: Img, rng: np.random.Generator, caption: str | None = None) -> list[Draft]:
        raise NotImplementedError

    def make_group(self, images: list[Img], rng: np.random.Generator) -> list[Draft]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "subtasks": list(self.subtasks),
            "inverse_task": self.inverse_task,
            "inputs": self.inputs,
            "needs_weights": self.needs_weights,
            "chainable": self.chainable,
            "algorithm": self.algorithm,
            "options": sorted(self.Options.model_fields),
        }


REGISTRY: dict[str, type[Synthesizer]] = {}


def register(cls: type[Synthesizer]) -> type[Synthesizer]:
    if cls.name in REGISTRY:
        raise ValueError(f"synthesizer {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


