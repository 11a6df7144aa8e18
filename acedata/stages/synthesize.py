"""Synthesize: ingested images -> edit pairs for the ACE task families (DESIGN.md §5).

Reads the `images` tables of earlier stages (photos only: rows whose `kind` is image),
runs the configured synthesizers (`acedata.synth`), filters every candidate pair and
writes:

- `images`: every image it drew (kind image / mask / condition), content-addressed;
- `pairs`: the accepted pairs (`parent_pair_id` set for later turns of multi-turn chains);
- `quarantine`: rejected candidates with the filter's reason (`item_id` = the pair id).

Every candidate ends in exactly one of pairs or quarantine: candidates = pairs + quarantine.
Reference generation works on sets of images of one subject: pair-mining sets (a `pairs`
table from an earlier stage with `set_id`) when present, else the ingest `group` column.

Planning runs in waves on workers (`acedata.synth.plan`): the driver never reads rows, and what
a photo gets depends only on its image_id and the spec, not on shard layout or unit counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from acedata import copies, shards
from acedata.config import StageConfig
from acedata.errors import UserError
from acedata.image_index import shared_reader
from acedata.images import open_rgb_fit
from acedata.models import ModelSpec
from acedata.schemas import DUPLICATES, IMAGES, PAIRS, QUARANTINE
from acedata.stage import Stage, UnitResult, WorkUnit, register
from acedata.synth import get, weight_free
from acedata.synth import plan as waves
from acedata.synth.base import Draft, Img, Rejected, Synthesizer
from acedata.synth.support.clip_filter import ClipFilterConfig, ClipScorer
from acedata.synth.support.collect import Collector, FailureLimit, SynthesizerFailures, describe_failures
from acedata.synth.support.filters import FilterConfig, check

log = logging.getLogger("acedata")


UNIT_PHOTOS, UNIT_SIDE, UNIT_PHOTOS_MAX = 8, 1024, 32  # see SynthesizeConfig.photos_per_unit
UNIT_SETS, UNIT_SETS_MAX = 8, 32  # see SynthesizeConfig.sets_per_unit


class SynthesizeConfig(StageConfig):
    synthesizers: list[str] | None = None  # names in acedata.synth; None = every weight-free one
    per_image: int | None = Field(None, ge=1)  # synthesizers per photo, rotated so all get used; None = all
    # Photos per unit; None: from the spec (`photos_per_unit`), so a unit holds about the same work
    # whatever the photo size and number of synthesizers, and its fixed commit stays a small share.
    images_per_unit: int | None = Field(None, ge=1)
    # Subject sets per reference unit; None: from the spec (`sets_per_unit`), like images_per_unit.
    groups_per_unit: int | None = Field(None, ge=1)
    # About this many photos (demo, smoke runs): a hash sample of image ids (see acedata.synth.plan)
    max_images: int | None = Field(None, ge=1)
    max_side: int = Field(1024, ge=32)  # photos are downscaled to this long side first (a new source row)
    chain_fraction: float = Field(0.25, ge=0, le=1)  # photos that also get a multi-turn edit chain
    chain_turns: int = Field(3, ge=2, le=9)
    reference_max_set: int = Field(6, ge=2)  # members of one subject set used for reference pairs
    seed: int = 0
    filters: FilterConfig = Field(default_factory=FilterConfig)
    clip_filter: ClipFilterConfig | None = None  # CLIP/SigLIP similarity filter (needs a model)
    models: dict[str, ModelSpec] = Field(default_factory=dict)  # synthesizer name -> weights
    # A synthesizer that raises (a bug, CUDA out of memory) rather than rejecting its input: past
    # this limit the unit fails (and the stage, over all units), with the exception in the log.
    failures: FailureLimit = Field(default_factory=FailureLimit)

    def photos_per_unit(self) -> int:
        """`images_per_unit`, or 8 photos' worth of every weight-free synthesizer at 1024 px (the
        encoded outputs a unit holds until it commits) in photos of this spec: 8 at the defaults,
        more for smaller photos or fewer synthesizers per photo, at most 32 (past that the commit
        is under ~3% of a unit, and small runs keep units to spread over workers)."""
        if self.images_per_unit is not None:
            return self.images_per_unit
        names = self.synthesizers if self.synthesizers is not None else weight_free()
        per_photo = sum(get(n).inputs == "image" for n in names)
        if self.per_image is not None:
            per_photo = min(per_photo, self.per_image)
        budget = UNIT_PHOTOS * len(weight_free()) * UNIT_SIDE**2
        return max(UNIT_PHOTOS, min(UNIT_PHOTOS_MAX, budget // (max(1, per_photo) * self.max_side**2)))

    def sets_per_unit(self) -> int:
        """`groups_per_unit`, or as many subject sets as make the work of a photo unit at the
        defaults (`photos_per_unit`), counting each member photo once per group synthesizer: 26
        at the defaults (6 members, `reference` alone), between 8 and 32. A reference pair draws
        no pixels, so a unit of 8 sets was mostly its fixed planning and commit."""
        if self.groups_per_unit is not None:
            return self.groups_per_unit
        names = self.synthesizers if self.synthesizers is not None else weight_free()
        per_set = self.reference_max_set * sum(get(n).inputs == "group" for n in names)
        budget = UNIT_PHOTOS * len(weight_free()) * UNIT_SIDE**2
        return max(UNIT_SETS, min(UNIT_SETS_MAX, budget // (max(1, per_set) * self.max_side**2)))

    @model_validator(mode="after")
    def _known_names_and_options(self) -> SynthesizeConfig:
        """Unknown synthesizer names and typos in `models.<name>.options` fail when the spec loads."""
        for name in self.synthesizers or []:
            get(name)
        for name, spec in self.models.items():
            get(name).parse_options(spec)
        return self


@register
class Synthesize(Stage):
    kind = "synthesize"
    Config = SynthesizeConfig
    outputs = {"images": IMAGES, "pairs": PAIRS, "quarantine": QUARANTINE, "duplicates": DUPLICATES}
    # 2: photos assigned by hashes of their ids, planned in waves (was sorted offsets);
    # 3: copies listed by place (`acedata.copies`)
    version = 3

    def __init__(self, config: SynthesizeConfig, ctx) -> None:
        super().__init__(config, ctx)
        names = config.synthesizers if config.synthesizers is not None else weight_free()
        if not names:
            raise UserError("synthesize: `synthesizers` is empty; name at least one (see acedata.synth)")
        self.classes: list[type[Synthesizer]] = [get(n) for n in names]
        # An actor pool (model loaded once per actor) only when a model synthesizer or filter runs.
        self.uses_model = (any(c.needs_weights or c.name in config.models for c in self.classes)
                           or config.clip_filter is not None)
        self.synths: dict[str, Synthesizer] = {}
        self.clip: ClipScorer | None = None
        self._metric_cache: dict = {}
        self._decoded: dict[tuple[str, bool], Img] = {}  # (image_id, resized) -> decoded, per unit
        self._uses: Counter[str] = Counter()  # uses of each photo left in the unit

    # --- driver ----------------------------------------------------------------------

    def _check_models(self) -> None:
        from acedata.models import resolve_local

        for c in self.classes:
            if not c.needs_weights and c.name not in self.config.models:
                continue
            spec = self.config.models.get(c.name)
            if spec is None:
                raise UserError(f"synthesize: synthesizer {c.name!r} needs weights; add models: {{{c.name}: "
                                f"{{name: ..., path: ...}}}} to the stage")
            if not spec.random_init:
                resolve_local(spec)  # ModelNotFound (one line) before any worker starts
        if self.config.clip_filter is not None and not self.config.clip_filter.model.random_init:
            resolve_local(self.config.clip_filter.model)

    def plan(self) -> list[WorkUnit]:
        self._check_models()
        self.waves = waves.WavePlan(self.config, self.ctx, any(c.inputs == "image" for c in self.classes),
                                    any(c.inputs == "group" for c in self.classes))
        return self.waves.first_wave()

    def next_wave(self, wave: int, counts: dict[str, int]) -> list[WorkUnit]:
        return self.waves.next_wave(wave, counts)

    def finish(self, counts: dict[str, int]) -> dict[str, Any]:
        """The summary from unit counts and manifests (no rows read). Byte-identical images two
        units drew (e.g. the same mask for look-alike photos) were listed in `duplicates` by the
        last waves (`acedata.copies`); committed shards are never rewritten."""
        copies.cleanup(self.ctx.stage_dir)  # all scratch buckets
        per, chained, reasons = waves.pop_tally(counts)
        repeated = counts.pop("cross_unit_duplicates", 0)  # == the duplicates table's rows
        counts["images"] = shards.count_rows(self.ctx.out("images")) - repeated
        pairs = shards.count_rows(self.ctx.out("pairs"))
        quarantined = shards.count_rows(self.ctx.out("quarantine"))
        if pairs + quarantined != counts.get("candidates", 0):
            raise RuntimeError(f"synthesize lost rows: candidates {counts.get('candidates')} != "
                               f"{pairs} pairs + {quarantined} quarantined")
        origin = self.waves.reference_origin if hasattr(self, "waves") else "unknown"
        log.info("synthesize: %d photos, reference sets from %s", counts.get("photos", 0), origin)
        log.info("synthesize: %d candidates -> %d pairs (%d chained) + %d quarantined %s", counts.get("candidates", 0),
                 pairs, chained, quarantined, dict(reasons))
        failed = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("synth_failures.") and v}
        if self.config.failures.exceeded(counts.get("synth_failures", 0), counts.get("synth_calls", 0)):
            raise SynthesizerFailures(f"synthesize: {counts['synth_failures']} of {counts['synth_calls']} synthesizer "
                                      f"calls failed over all units (limit {self.config.failures.max_rate:.0%}): "
                                      + ", ".join(f"{k} x{v}" for k, v in sorted(failed.items()))
                                      + "; the exceptions are in the quarantine table (reason synth_failed)")
        return {"synth_failures": dict(sorted(failed.items())), "pairs_by_task": dict(sorted(per.items())),
                "chained_pairs": chained, "repeated_images": repeated,
                "quarantine_reasons": dict(sorted(reasons.items())), "reference_sets": origin}

    # --- workers ---------------------------------------------------------------------

    def setup(self) -> None:
        for c in self.classes:
            s = c()
            spec = self.config.models.get(c.name)
            if c.needs_weights or spec is not None:  # weight-free ones may take model masks
                s.load(spec)
            self.synths[c.name] = s
        if self.config.clip_filter is not None:
            self.clip = ClipScorer(self.config.clip_filter)

    def _ensure_setup(self) -> None:
        if not self.synths:
            self.setup()

    def process(self, unit: WorkUnit) -> UnitResult:
        stage_dir = self.ctx.stage_dir
        if copies.is_copies_unit(unit):
            return copies.run(unit, stage_dir, self.ctx.out("images"), waves.copy_rank)
        if waves.is_bookkeeping(unit):
            return waves.bookkeeping(unit, stage_dir)
        self._ensure_setup()
        out = Collector(self.kind, self.config.seed, self.synths)
        extra: dict[str, int] = {}
        photos: list[str] = []
        if "photos" in unit.payload:
            ids, extra = waves.photo_unit(unit, stage_dir)
            photos = ids if unit.payload["per_image"] else []
        sets = list(waves.ref_sets(unit, stage_dir, self.config.reference_max_set, self.config.seed))
        # Each source is read and decoded once per unit, whatever number of synthesizers, chain
        # turns and subject sets use it: one batched read, then `_decoded`, where a photo stays
        # only until its last use in the unit (`_uses`), so memory holds what is still needed.
        self._decoded = {}
        uses = [*photos, *(i for _, members in sets for i in members)]
        self._uses = Counter(uses)
        wanted = list(dict.fromkeys(uses))
        by_id = dict(zip(wanted, _read_ids(self.ctx.input("images"), wanted))) if wanted else {}
        for image_id in photos:
            self._per_image(waves.rotation(self.config.seed, image_id), by_id[image_id], out)
            self._release(image_id)
        for index, members in sets:
            self._per_set(index, [by_id[i] for i in members], out)
            for i in members:
                self._release(i)
        self._decoded = {}
        if out.failures:
            log.warning("synthesize unit %s: failing synthesizers: %s", unit.id, describe_failures(out.failures))
        out.check_failures(self.config.failures, unit.id)
        tables = out.tables()
        return UnitResult(tables, {**out.counts(), **extra, **waves.tally(tables)})

    def _call(self, out: Collector, row: dict[str, Any], name: str, make, *args) -> list[Draft] | None:
        """One synthesizer call, `make(*args)`: its drafts, or None after recording a rejection or a
        failure (counted; past the failure limit the unit fails)."""
        out.calls += 1
        try:
            return make(*args)
        except Rejected as e:
            out.rejected(row, name, e.reason, f"{type(e).__name__}: {e}")
        except Exception as e:  # a failing synthesizer: counted, bounded by `failures`
            log.exception("synthesizer %s failed on %s", name, row["image_id"])
            out.failed(row, name, e)
        return None

    def _source(self, row: dict[str, Any], resize: bool = True) -> Img:
        """The row's photo, decoded once per unit; with `resize`, at most `max_side` on its long
        side (a new image when it had to shrink)."""
        key = (row["image_id"], resize)
        hit = self._decoded.get(key)
        if hit is not None:
            return hit
        im, resized = open_rgb_fit(row["image"]["bytes"], self.config.max_side if resize else None)
        if resized:
            img = Img(im, "image", None, {"_new": True, "resized_from": row["image_id"]})
        else:
            img = Img(im, "image", row["image_id"])
            self._decoded[(row["image_id"], False)] = img  # the original size is the same image
        self._decoded[key] = img
        return img

    def _release(self, image_id: str) -> None:
        """One use of a photo done; its decoded pixels go after the last."""
        self._uses[image_id] -= 1
        if self._uses[image_id] <= 0:
            self._decoded.pop((image_id, True), None)
            self._decoded.pop((image_id, False), None)

    def _rng(self, image_id: str, *salt: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, int(image_id[:12], 16), *salt])

    def _per_image(self, index: int, row: dict[str, Any], out: Collector) -> None:
        try:
            src = self._source(row)
        except Exception as e:  # noqa: BLE001 - one unreadable row must not stop the unit
            out.unreadable(row, e)
            return
        order = [c.name for c in self.classes if c.inputs == "image"]
        if self.config.per_image is None or self.config.per_image >= len(order):
            chosen = order
        else:
            chosen = [order[(index * self.config.per_image + j) % len(order)] for j in range(self.config.per_image)]
        for j, name in enumerate(chosen):
            synth, rng = self.synths[name], self._rng(row["image_id"], j)
            drafts = self._call(out, row, name, synth.make, src, rng, row.get("caption"))
            for d in drafts or []:
                out.add(d, row, self._judge(d, row))
        chainable = [c.name for c in self.classes if c.chainable and c.inputs == "image"]
        if not chainable or self.config.chain_fraction <= 0:
            return  # no chain can start: skip seeding its generator (a visible per-photo cost)
        rng = self._rng(row["image_id"], 1_000)
        if rng.random() < self.config.chain_fraction:
            self._chain(src, row, chainable, rng, out)

    def _chain(self, src: Img, row: dict[str, Any], names: list[str], rng: np.random.Generator,
               out: Collector) -> None:
        """A multi-turn chain: each turn edits the previous turn's target."""
        current, parent = src, None
        for turn in range(self.config.chain_turns):
            name = names[int(rng.integers(len(names)))]
            drafts = self._call(out, row, name, self.synths[name].make, current, rng, row.get("caption"))
            if not drafts:
                return
            d = drafts[0]
            d.parent = parent
            d.params = {**d.params, "chain_turn": turn + 1}
            verdict = self._judge(d, row)
            out.add(d, row, verdict)
            if not verdict.ok:
                return
            current, parent = d.target, d

    def _per_set(self, index: int, rows: list[dict[str, Any]], out: Collector) -> None:
        images = [self._source(r, resize=False) for r in rows]
        by_id = {r["image_id"]: r for r in rows}
        for synth in (self.synths[c.name] for c in self.classes if c.inputs == "group"):
            rng = self._rng(rows[0]["image_id"], 2_000, index)
            drafts = self._call(out, rows[0], synth.name, synth.make_group, images, rng)
            for d in drafts or []:
                row = by_id[d.target.id]
                out.add(d, row, self._judge(d, row))

    def _judge(self, d: Draft, row: dict[str, Any]):
        if len(self._metric_cache) > 256:  # the inverse pair follows right after; keep it small
            # but keep the images' features (an LRU of a few images, `filters.FEATURES_KEPT`): the
            # photo being judged against its next synthesizers' outputs keeps its own
            kept = self._metric_cache.get("_features")
            self._metric_cache.clear()
            if kept is not None:
                self._metric_cache["_features"] = kept
        verdict = check(d, self.config.filters, self._metric_cache)
        if verdict.ok and self.clip is not None:
            verdict = self.clip.judge(d, row.get("caption"), verdict)
        return verdict


def _read_ids(tables: list[str], ids: list[str]) -> list[dict[str, Any]]:
    """Rows (id, bytes, caption, group) in the order given, via the tables' image index."""
    got = shared_reader(tables).rows(ids, ("image_id", "image", "caption", "group"))
    return [got[i] for i in ids]
