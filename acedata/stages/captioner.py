"""train_captioner: the instruction-captioner loop inside a pipeline (issue: curated data ->
trained captioner -> served captioner -> labelled pairs).

One work unit: export the curated (pair, instruction) records of the run's `instructions`
tables (`acedata export-captioner`'s code) to STAGE/export, fine-tune the captioner on them
(STAGE/train, resumed from its newest checkpoint on a rerun), evaluate every checkpoint on the
held-out split (STAGE/train/eval) and write a servable folder (STAGE/model, merged; or the
LoRA adapter). The `captioners` table names the checkpoint, the folder and the metrics; a
later `instruct` stage with `natural_mode: captioner` and `backend: transformers` (CPU / one
GPU), `ray_vllm` (model_source) or `http` (a `vllm serve` of the folder) relabels pairs with
it, and every row it labels names that checkpoint in its provenance.

Training here runs in one process (CPU or one GPU); multi-GPU runs go through
`acedata train-captioner --workers N` / `--submit`, which write the same folders.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field

from acedata import storage
from acedata.config import StageConfig
from acedata.errors import UserError
from acedata.stage import Stage, UnitResult, WorkUnit, register

CAPTIONERS = pa.schema([
    pa.field("checkpoint", pa.string(), False),
    pa.field("model_dir", pa.string(), False),
    pa.field("layout", pa.string(), False),  # merged | adapter
    pa.field("step", pa.int64(), False),
    pa.field("train_records", pa.int64()),
    pa.field("heldout_records", pa.int64()),
    pa.field("metrics", pa.string()),  # JSON: held-out metrics of this checkpoint
])


class TrainCaptionerConfig(StageConfig):
    config: str  # captioner training YAML (model/configs/captioner-*.yaml)
    # a run directory whose instructions/pairs/images tables to export (as `acedata export-captioner RUN`);
    # unset: the tables of earlier stages / `inputs:`
    run: str | None = None
    methods: list[str] = Field(default_factory=lambda: ["template", "llm_rewrite", "mllm_llm", "captioner"])
    first_variant_only: bool = False
    limit: int | None = None
    steps: int | None = None  # override the YAML's steps
    evaluate: bool = True
    keep_adapter: bool = False  # serve base + LoRA adapter instead of a merged folder


@register
class TrainCaptioner(Stage):
    kind = "train_captioner"
    Config = TrainCaptionerConfig
    outputs: ClassVar[dict[str, pa.Schema]] = {"captioners": CAPTIONERS}

    def plan(self) -> list[WorkUnit]:
        c: TrainCaptionerConfig = self.config
        from acedata.captioner.config import load_config

        cfg = load_config(c.config, {"steps": c.steps})  # a config mistake fails here, as one line
        if cfg.model.tiny or storage.exists_uri(cfg.model.path):
            # a relative folder means the driver's directory; workers may run elsewhere
            cfg.model.path = storage.absolute(cfg.model.path)
        self._tables("instructions")
        if "://" in self.ctx.stage_dir:
            raise UserError("train_captioner writes checkpoints to a local/shared filesystem path; "
                            "run the pipeline with a filesystem --out")
        return [WorkUnit("train", {"config": cfg.model_dump(mode="json")})]

    def _tables(self, name: str) -> list[str]:
        if self.config.run is None:
            return self.ctx.input(name)
        from acedata.instruct.export import find_tables

        found = find_tables(self.config.run, name)
        if not found:
            raise UserError(f"train_captioner: no finished {name!r} table under {self.config.run}")
        return found

    def process(self, unit: WorkUnit) -> UnitResult:
        c: TrainCaptionerConfig = self.config
        from acedata.captioner.config import CaptionerConfig
        from acedata.captioner.evaluate import evaluate_run
        from acedata.captioner.serve import export_model
        from acedata.captioner.train import latest_checkpoint, train_local
        from acedata.instruct.export import export_captioner_data

        d = self.ctx.stage_dir
        data, run, model_dir = storage.join(d, "export"), storage.join(d, "train"), storage.join(d, "model")
        counts = export_captioner_data(
            self._tables("instructions"), self._tables("pairs"), self._tables("images"), data,
            methods=tuple(c.methods), variants="first" if c.first_variant_only else "all", limit=c.limit)
        if counts["records"] == 0:
            raise UserError(f"train_captioner: no curated records to train on ({counts})")
        cfg = CaptionerConfig(**unit.payload["config"])
        trainer = train_local(cfg, data, run, progress=False)
        metrics: dict[str, Any] = {}
        if c.evaluate and trainer.heldout:
            metrics = evaluate_run(run, data)[-1]
        ckpt = latest_checkpoint(run)
        info = export_model(ckpt, model_dir, keep_adapter=c.keep_adapter)
        row = {"checkpoint": ckpt, "model_dir": model_dir, "layout": info["layout"], "step": info["step"],
               "train_records": len(trainer.train_set), "heldout_records": len(trainer.heldout),
               "metrics": json.dumps(metrics)}
        out = {"captioner_records": counts["records"], "captioner_step": info["step"]}
        return UnitResult({"captioners": pa.Table.from_pylist([row], CAPTIONERS)}, out)
