"""Label Studio interop: review tasks out (JSON tasks + a labeling config), annotations back in.

Export writes Label Studio's JSON task format: a list of ``{"data": {...}}`` with one task per
pair. ``data`` holds the images (``input_1`` .. ``input_K``, ``mask``, ``target``: URLs of image
files written next to the tasks file, or ``data:`` URIs), ``pair_id``, ``task``/``subtask`` and
the candidates: ``candidates`` feeds a dynamic ``<Choices value="$candidates">`` and
``candidate_info`` keeps each choice's variant, method and text so the import maps a picked
choice back to its variant. The labeling config (XML) next to it shows the images, the choice
of candidate, a TextArea for the corrected instruction and a reject choice with reason codes.

Import reads a Label Studio JSON export (tasks with ``annotations[].result[]``; ``choices`` and
``textarea`` items by ``from_name``; ``completed_by``; ``created_at``/``updated_at``) into the
run's reviews table (origin ``label_studio``). Per annotation: a reject reason -> ``reject``; a
corrected text -> ``edit`` (or ``accept`` when it equals a candidate); a picked candidate ->
``accept``; cancelled or empty annotations are skipped and counted.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from acedata.errors import UserError
from acedata.lcu import local_refs
from acedata.review.table import REJECT_REASONS, append_reviews, read_reviews, review_id

if TYPE_CHECKING:  # only for hints: export_tasks imports it when called
    from acedata.lookup import ImageStore

CANDIDATE, CORRECTED, REJECT, COMMENT = "candidate", "corrected", "reject", "comment"
ORIGIN = "label_studio"
DEFAULT_URL_PREFIX = "/data/local-files/?d="  # Label Studio's local-files storage route


def _placeholder() -> str:
    """A 1x1 light-grey PNG for image slots a pair does not use (no mask, fewer inputs)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (230, 230, 230)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _mime(fmt: str | None) -> str:
    return f"image/{_ext(fmt).replace('jpg', 'jpeg')}"


def _ext(fmt: str | None) -> str:
    """File extension of a stored container (acedata.codecs: JPEG, WEBP, PNG)."""
    f = (fmt or "").upper()
    return "jpg" if f in ("JPEG", "JPG") else "webp" if f == "WEBP" else "png"


def candidate_label(k: int, text: str) -> str:
    return f"{k}. {text}"


def labeling_config(max_inputs: int, with_mask: bool) -> str:
    """The Label Studio labeling interface for review tasks of up to `max_inputs` inputs."""
    slots = [f"input_{i}" for i in range(1, max_inputs + 1)] + (["mask"] if with_mask else []) + ["target"]
    images = "\n".join(
        f'      <View style="flex: 1"><Header value={quoteattr(s.replace("_", " "))} size="6"/>'
        f'<Image name="{s}" value="${s}" maxWidth="100%"/></View>' for s in slots)
    reasons = "\n".join(f"      <Choice value={quoteattr(r)}/>" for r in REJECT_REASONS)
    return f"""<View>
  <Text name="title" value="$title"/>
  <View style="display: flex; gap: 8px">
{images}
  </View>
  <Text name="analysis" value="$analysis"/>
  <Header value="Accept the right instruction"/>
  <Choices name="{CANDIDATE}" toName="target" choice="single" value="$candidates"/>
  <Header value="...or write the corrected instruction"/>
  <Text name="hint" value="$indicator_hint"/>
  <TextArea name="{CORRECTED}" toName="target" maxSubmissions="1" editable="true" rows="2"/>
  <Header value="...or reject the pair"/>
  <Choices name="{REJECT}" toName="target" choice="single">
{reasons}
  </Choices>
  <TextArea name="{COMMENT}" toName="target" maxSubmissions="1" editable="true" rows="1" placeholder="comment"/>
</View>
"""


def indicator_hint(n_inputs: int) -> str:
    if n_inputs <= 1:
        return "name the input image {image}"
    return "name the inputs " + ", ".join(f"{{image{i}}}" for i in range(1, n_inputs + 1))


def build_task(pair: dict[str, Any], candidates: list[dict[str, Any]], urls: dict[str, str], max_inputs: int,
               blank: str) -> dict[str, Any]:
    """One Label Studio task for a pair (`urls`: image_id -> URL or data URI)."""
    inputs = [pair["source_id"], *(pair.get("extra_input_ids") or [])]
    # Label Studio fills a tag attribute from one whole `$field`, so composed texts are fields of their own
    data: dict[str, Any] = {"pair_id": pair["pair_id"], "task": pair["task"], "subtask": pair["subtask"],
                            "title": f"{pair['task']} / {pair['subtask']} (pair {pair['pair_id']})",
                            "n_inputs": len(inputs), "indicator_hint": indicator_hint(len(inputs))}
    for i in range(max_inputs):
        data[f"input_{i + 1}"] = urls[inputs[i]] if i < len(inputs) else blank
    data["mask"] = urls[pair["mask_id"]] if pair.get("mask_id") else blank
    data["target"] = urls[pair["target_id"]]
    info = [{"value": candidate_label(k, c["instruction"]), "variant": c["variant"], "method": c["method"],
             "text": c["instruction"]} for k, c in enumerate(candidates, 1)]
    data["candidates"] = [{"value": c["value"]} for c in info]
    data["candidate_info"] = info
    data["analysis"] = analysis_text(candidates)
    return {"data": data}


def analysis_text(candidates: list[dict[str, Any]]) -> str:
    """The MLLM's difference/commonality analysis of a natural pair, when a candidate has one."""
    for c in candidates:
        try:
            a = json.loads(c.get("provenance") or "null")
        except ValueError:
            continue
        a = a.get("analysis") if isinstance(a, dict) else None
        if isinstance(a, dict):
            diff = "; ".join(map(str, a.get("differences") or []))
            same = "; ".join(map(str, a.get("commonalities") or []))
            return f"MLLM analysis. Differences: {diff or '-'}. Commonalities: {same or '-'}."
    return "(no MLLM analysis for this pair)"


# --- import ---------------------------------------------------------------------------------


def _annotator(completed_by: Any) -> str | None:
    if isinstance(completed_by, dict):  # some exports expand the user
        who = completed_by.get("email") or completed_by.get("username") or completed_by.get("id")
        return None if who is None else (str(who) if "@" in str(who) else f"ls-user-{who}")
    if isinstance(completed_by, bool) or completed_by is None:
        return None
    if isinstance(completed_by, int):
        return f"ls-user-{completed_by}"
    return str(completed_by)


def _when(ann: dict[str, Any], where: str) -> dt.datetime | None:
    raw = ann.get("updated_at") or ann.get("created_at")
    if raw is None:
        return None
    try:
        t = dt.datetime.fromisoformat(str(raw))
    except ValueError:
        raise UserError(f"{where}: timestamp {raw!r} is not ISO 8601") from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _picked(result: list[Any], where: str) -> dict[str, str]:
    """from_name -> the value an annotation gave (choices: first choice; textarea: joined text)."""
    out: dict[str, str] = {}
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise UserError(f"{where}: a result item is not an object with a 'value'")
        name, typ, value = item.get("from_name"), item.get("type"), item["value"]
        if typ == "choices" and value.get("choices"):
            out[name] = str(value["choices"][0])
        elif typ == "textarea" and value.get("text"):
            text = value["text"]
            out[name] = " ".join(str(t) for t in (text if isinstance(text, list) else [text])).strip()
    return out


def decision_row(task: dict[str, Any], ann: dict[str, Any], where: str) -> tuple[str, dict[str, Any] | None]:
    """(status, review row) for one annotation; status is "ok" or why it was skipped."""
    data = task["data"]
    if ann.get("was_cancelled"):
        return "skipped_cancelled", None
    result = ann.get("result")
    if not isinstance(result, list):
        raise UserError(f"{where}: 'result' is not a list")
    got = _picked(result, where)
    info = data.get("candidate_info") or []
    by_label = {c.get("value"): c for c in info if isinstance(c, dict)}
    by_text = {" ".join(str(c.get("text", "")).split()): c for c in info if isinstance(c, dict)}
    row: dict[str, Any] = {"instruction": None, "chosen_variant": None, "chosen_method": None, "reject_reason": None}
    corrected = " ".join(got.get(CORRECTED, "").split())
    if got.get(REJECT):
        row.update(decision="reject", reject_reason=got[REJECT])
    elif corrected:
        same = by_text.get(corrected)
        if same is not None:  # typed (or left) exactly a candidate's text: that is an accept
            row.update(decision="accept", instruction=same["text"], chosen_variant=same.get("variant"),
                       chosen_method=same.get("method"))
        else:
            row.update(decision="edit", instruction=corrected, chosen_method="human")
    elif got.get(CANDIDATE):
        c = by_label.get(got[CANDIDATE])
        if c is None:
            return "unknown_choice", None
        row.update(decision="accept", instruction=c.get("text"), chosen_variant=c.get("variant"),
                   chosen_method=c.get("method"))
    else:
        return "skipped_empty", None
    who = _annotator(ann.get("completed_by"))
    when = _when(ann, where)
    if who is None or when is None:
        return "skipped_no_author_or_time", None
    pid = str(data["pair_id"])
    row.update(review_id=review_id(pid, who, when, ORIGIN), pair_id=pid, task=data.get("task"),
               subtask=data.get("subtask"), annotator=who, decided_at=when, origin=ORIGIN,
               queue=f"label_studio:project-{task['project']}" if task.get("project") is not None else "label_studio",
               comment=got.get(COMMENT) or None, shown=json.dumps(info, ensure_ascii=False))
    return "ok", row


def load_export(path: str) -> list[dict[str, Any]]:
    """The tasks of a Label Studio JSON export, with one-line errors for files that are not one."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            tasks = json.load(f)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (expected Label Studio's JSON export)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                        "export the project from Label Studio as JSON") from None
    if not isinstance(tasks, list):
        raise UserError(f"{path}: a Label Studio JSON export is a list of tasks, found {type(tasks).__name__}")
    for i, t in enumerate(tasks):
        if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
            raise UserError(f"{path}: task {i} has no 'data' object (is this a JSON-MIN or CSV export?)")
        if not isinstance(t.get("annotations", t.get("completions", [])), list):
            raise UserError(f"{path}: task {i}: 'annotations' is not a list")
    return tasks


def import_annotations(run_dir: str, path: str, known_pairs: dict[str, int]) -> dict[str, int]:
    """Append the annotations of a Label Studio export to the run's reviews table; returns counts.

    `known_pairs`: pair_id -> number of inputs, for the pairs of the run (others are counted as
    unknown and not imported; a corrected text naming an input the pair lacks is imported and
    counted, assemble quarantines it as `bad_indicator`).
    """
    tasks = load_export(path)
    counts = {"tasks": len(tasks), "annotations": 0, "imported": 0, "already_imported": 0, "unknown_pair": 0,
              "unknown_choice": 0, "skipped_cancelled": 0, "skipped_empty": 0, "skipped_no_author_or_time": 0,
              "edits_with_bad_indicator": 0}
    rows: list[dict[str, Any]] = []
    for i, task in enumerate(tasks):
        pid = task["data"].get("pair_id")
        anns = task.get("annotations") or task.get("completions") or []  # "completions": Label Studio < 1.0
        counts["annotations"] += len(anns)
        if pid is None or str(pid) not in known_pairs:
            counts["unknown_pair"] += len(anns)
            continue
        for j, ann in enumerate(anns):
            if not isinstance(ann, dict):
                raise UserError(f"{path}: task {i} annotation {j} is not an object")
            status, row = decision_row(task, ann, f"{path}: task {i} annotation {j}")
            if row is None:
                counts[status] += 1
                continue
            if row["decision"] == "edit" and any(k > known_pairs[str(pid)] for k in local_refs(row["instruction"])):
                counts["edits_with_bad_indicator"] += 1
            rows.append(row)
    if rows:
        new = append_reviews(run_dir, rows)
        counts["imported"] = new
        counts["already_imported"] = len(rows) - new
    return counts


# --- export -----------------------------------------------------------------------------------


def _image_urls(store: ImageStore, need: list[str], images: str, folder: str, url_prefix: str) -> dict[str, str]:
    """image_id -> the URL a task shows it by: a data URI, or a file written under `folder`/images."""
    urls: dict[str, str] = {}
    for lo in range(0, len(need), 512):
        for image_id, row in store.rows(need[lo: lo + 512], ["image_id", "image", "format"]).items():
            data = row["image"]["bytes"]
            if images == "data-uri":
                urls[image_id] = f"data:{_mime(row['format'])};base64," + base64.b64encode(data).decode()
                continue
            rel = f"images/{image_id}.{_ext(row['format'])}"
            os.makedirs(os.path.join(folder, "images"), exist_ok=True)
            with open(os.path.join(folder, rel), "wb") as f:
                f.write(data)
            urls[image_id] = url_prefix + rel
    return urls


def export_tasks(run_dir: str, out_path: str, images: str = "files", url_prefix: str = DEFAULT_URL_PREFIX,
                 tasks_filter: list[str] | None = None, limit: int | None = None,
                 unreviewed_only: bool = False) -> dict[str, Any]:
    """Write Label Studio tasks for the run's pairs that have instructions, and the labeling config.

    `images`: "files" writes the images to `<tasks folder>/images/` and refers to them as
    `url_prefix + images/<id>.<ext>` (Label Studio's local-files route by default: set
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to the tasks folder); "data-uri" inlines them.
    """
    from acedata.instruct.export import _iter_rows, find_tables
    from acedata.lookup import ImageStore

    if images not in ("files", "data-uri"):
        raise UserError(f"--images {images!r}: use files or data-uri")
    cols = ["pair_id", "source_id", "target_id", "task", "subtask", "mask_id", "extra_input_ids"]
    pairs = {}
    for r in _iter_rows(find_tables(run_dir, "pairs"), cols):
        pairs.setdefault(r["pair_id"], r)
    cands: dict[str, dict[int, dict[str, Any]]] = {}
    for r in _iter_rows(find_tables(run_dir, "instructions"),
                        ["pair_id", "variant", "instruction", "method", "provenance"]):
        if r["pair_id"] in pairs:
            cands.setdefault(r["pair_id"], {}).setdefault(int(r["variant"]), r)
    reviewed = set(read_reviews(run_dir).column("pair_id").to_pylist()) if unreviewed_only else set()
    chosen = [pid for pid in sorted(cands) if pid not in reviewed
              and (not tasks_filter or pairs[pid]["task"] in tasks_filter)][: limit or None]
    if not chosen:
        raise UserError(f"no pairs with instructions to export from {run_dir}"
                        + (" (all reviewed already)" if reviewed else ""))
    store = ImageStore(find_tables(run_dir, "images"))
    folder = os.path.dirname(os.path.abspath(out_path))
    need = sorted({i for pid in chosen for i in [pairs[pid]["source_id"], pairs[pid]["target_id"],
                                                 *(pairs[pid]["extra_input_ids"] or []), pairs[pid]["mask_id"]] if i})
    urls = _image_urls(store, need, images, folder, url_prefix)
    max_inputs = max(1 + len(pairs[pid]["extra_input_ids"] or []) for pid in chosen)
    blank = _placeholder()
    tasks, missing = [], 0
    for pid in chosen:
        p = pairs[pid]
        if any(i and i not in urls for i in [p["source_id"], p["target_id"], p["mask_id"], *(p["extra_input_ids"] or [])]):
            missing += 1
            continue
        tasks.append(build_task(p, [cands[pid][v] for v in sorted(cands[pid])], urls, max_inputs, blank))
    with_mask = any(pairs[pid]["mask_id"] for pid in chosen)
    config_path = os.path.splitext(out_path)[0] + ".label_config.xml"
    for path, body in ((out_path, json.dumps(tasks, ensure_ascii=False, indent=1)),
                       (config_path, labeling_config(max_inputs, with_mask))):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(path + ".tmp", path)
    return {"tasks": len(tasks), "skipped_missing_image": missing, "images": len(urls), "tasks_file": out_path,
            "label_config": config_path}
