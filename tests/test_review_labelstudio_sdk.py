"""Cross-check against Label Studio's own validator (label_studio_sdk.LabelInterface).

The SDK cannot be a dependency: label-studio-sdk 2.1 pins opencv-python-headless < 4.13 (we ship 5)
and label-studio 1.23 pins pyarrow < 25 and openai < 2. So this runs only where the SDK is importable
(installed with --no-deps into a side folder on PYTHONPATH) and is skipped elsewhere.
"""

from __future__ import annotations

import pytest

from acedata.review.labelstudio import build_task, decision_row, labeling_config
from acedata.review.table import REJECT_REASONS

sdk = pytest.importorskip("label_studio_sdk.label_interface", reason="label-studio-sdk conflicts with our pins")


def test_config_tasks_and_annotations_pass_label_studio_validation():
    li = sdk.LabelInterface(labeling_config(2, True))
    li.validate()
    assert {c.name for c in li.controls} == {"candidate", "corrected", "reject", "comment"}
    pair = {"pair_id": "p", "task": "reference_generation", "subtask": "subject", "source_id": "a",
            "target_id": "b", "mask_id": None, "extra_input_ids": ["c"]}
    cands = [{"variant": 0, "method": "template", "instruction": "put {image1} on {image2}", "provenance": None},
             {"variant": 1, "method": "llm_rewrite", "instruction": "place {image1} onto {image2}", "provenance": None}]
    task = build_task(pair, cands, {i: f"http://127.0.0.1/{i}.png" for i in "abc"}, 2, "data:,")
    assert li.validate_task(task)
    ann = {"completed_by": 3, "created_at": "2026-02-01T10:00:00Z", "result": [
        {"id": "x1", "from_name": "candidate", "to_name": "target", "type": "choices",
         "value": {"choices": [task["data"]["candidates"][1]["value"]]}}]}
    assert li.validate_annotation(ann)
    status, row = decision_row(task, ann, "t")
    assert status == "ok" and row["decision"] == "accept" and row["chosen_variant"] == 1
    for _ in range(5):  # the SDK's own sample annotations import as a decision (or are counted)
        sample = li.generate_sample_annotation()
        sample.update(completed_by=1, created_at="2026-02-01T10:00:00Z")
        status, row = decision_row(task, sample, "t")
        assert status in ("ok", "skipped_empty", "unknown_choice")
        if row is not None and row["decision"] == "reject":
            assert row["reject_reason"] in REJECT_REASONS
