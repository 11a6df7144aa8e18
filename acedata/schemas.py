"""Arrow schemas of every table the platform writes (DESIGN.md §3).

Every writer takes its schema from here. Image columns follow the Hugging Face
`datasets` Image convention, `struct<bytes: binary, path: string>`, and each schema
carries the `datasets` features metadata so a shard opens with
`datasets.load_dataset("parquet", ...)` with decoded images, as well as with pyarrow
and polars.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "1.0"

# --- building blocks -------------------------------------------------------------

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCORE = pa.struct([("name", pa.string()), ("value", pa.float32())])
SCORES = pa.list_(SCORE)
# One input of a Condition Unit: an image and an optional mask (white = region to edit).
CU_INPUT = pa.struct([("image", IMAGE), ("mask", IMAGE)])
CU_INPUTS = pa.list_(CU_INPUT)
# A history CU: its own instruction, its inputs and the image it produced.
HISTORY_CU = pa.struct([("instruction", pa.string()), ("inputs", CU_INPUTS), ("target", IMAGE)])
REJECTED = pa.list_(pa.struct([("text", pa.string()), ("reason", pa.string())]))


def _f(name: str, typ: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable)


# --- tables ----------------------------------------------------------------------

IMAGES = pa.schema(
    [
        _f("image_id", pa.string(), False),  # hash of size + decoded pixels in the run's id scheme (acedata.ids)
        _f("source_uri", pa.string(), False),
        _f("width", pa.int32(), False),
        _f("height", pa.int32(), False),
        _f("format", pa.string()),  # container of the stored bytes: JPEG / WEBP / PNG (acedata.codecs)
        _f("image", IMAGE),
        _f("kind", pa.string()),  # image | mask | condition (synthesized maps)
        _f("orig_width", pa.int32()),
        _f("orig_height", pa.int32()),
        _f("orig_format", pa.string()),
        _f("orig_mode", pa.string()),
        _f("caption", pa.string()),
        _f("url", pa.string()),
        _f("license", pa.string()),
        _f("group", pa.string()),  # ground-truth group where a source knows it (demo corpus)
        _f("meta", pa.string()),  # remaining source metadata as JSON
    ]
)

QUARANTINE = pa.schema(
    [
        _f("source_uri", pa.string(), False),
        _f("stage", pa.string(), False),
        _f("reason", pa.string(), False),  # short code, e.g. decode_error, too_small
        _f("detail", pa.string()),
        _f("item_id", pa.string()),  # image_id / pair_id when the row had one
    ]
)

DUPLICATES = pa.schema(
    [
        _f("source_uri", pa.string(), False),
        _f("image_id", pa.string(), False),  # the kept image this input duplicated
        # Where a listed copy is stored (cross-unit rows; null for inputs never stored): the images
        # table's shard `<unit>-<attempt>-<part>.parquet`, row `row` of it. Readers skip by place,
        # not by (source_uri, image_id), which the kept copy may share (the same file read twice).
        _f("unit", pa.string()),
        _f("part", pa.int32()),
        _f("row", pa.int64()),
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            _f("image_id", pa.string(), False),
            _f("embedding", pa.list_(pa.float16(), dim), False),
            _f("model", pa.string(), False),  # model name + weights id ("random-init" when so)
        ]
    )


CLUSTERS = pa.schema(
    [
        _f("image_id", pa.string(), False),
        _f("cluster_id", pa.int32(), False),
        _f("distance", pa.float32(), False),  # 1 - cosine similarity to the centroid
        # border points: the second-nearest centroid when it is almost as near (pair mines the
        # point in both clusters, so pairs split by the partition are recovered); else null
        _f("cluster_id2", pa.int32()),
    ]
)

# Template slots ({object}, {style} ... in acedata/instruct/templates/*.yaml); null = not stated.
SLOTS = pa.struct([(name, pa.string()) for name in ("object", "new_object", "style", "attribute", "prompt", "caption")])

PAIRS = pa.schema(
    [
        _f("pair_id", pa.string(), False),
        _f("source_id", pa.string(), False),
        _f("target_id", pa.string(), False),
        _f("task", pa.string(), False),
        _f("subtask", pa.string(), False),
        _f("mask_id", pa.string()),  # image_id of a mask (repainting, element editing)
        _f("extra_input_ids", pa.list_(pa.string())),  # more inputs (references, layers)
        _f("cluster_id", pa.int32()),
        _f("set_id", pa.int64()),
        _f("sim_pass1", pa.float32()),
        _f("score_pass2", pa.float32()),
        _f("scores", SCORES),  # filter metrics (ssim, l1, clip directional ...)
        _f("parent_pair_id", pa.string()),  # the pair this edit was applied on top of (chains)
        _f("provenance", pa.string()),  # JSON: stage, algorithm/model, params, seed
        # template slot values the synthesizer states; the instruct stage fills templates from
        # them. Null for mined pairs.
        _f("slots", SLOTS),
    ]
)

INSTRUCTIONS = pa.schema(
    [
        _f("pair_id", pa.string(), False),
        _f("variant", pa.int32(), False),  # 0 = template / first; k = k-th accepted rewrite
        _f("instruction", pa.string(), False),
        _f("method", pa.string(), False),  # template | llm_rewrite | captioner | mllm_llm | caption
        _f("model", pa.string()),
        _f("rejected", REJECTED),
        _f("provenance", pa.string()),
    ]
)

LCU = pa.schema(
    [
        _f("sample_id", pa.string(), False),
        _f("task", pa.string(), False),
        _f("subtask", pa.string(), False),
        _f("instruction", pa.string(), False),  # current CU; "{image}" = current input
        _f("inputs", CU_INPUTS),  # current CU inputs (empty for text-to-image)
        _f("target", IMAGE),
        _f("history", pa.list_(HISTORY_CU)),  # earlier CUs, oldest first (<= m)
        _f("num_turns", pa.int32(), False),  # len(history) + 1
        _f("width", pa.int32()),  # target size, so stats never touch image bytes
        _f("height", pa.int32()),
        _f("instruction_method", pa.string()),
        _f("pair_id", pa.string()),
        _f("source_ids", pa.list_(pa.string())),
        _f("scores", SCORES),
        _f("provenance", pa.string()),
    ]
)

# One human decision on one pair (review tool or an imported Label Studio annotation).
# Append-only: a later decision on the same pair by the same annotator supersedes an
# earlier one by `decided_at`; consumers take the latest per (pair_id, annotator).
REVIEW_DECISIONS = ("accept", "edit", "reject", "skip")
REVIEWS = pa.schema(
    [
        _f("review_id", pa.string(), False),  # sha256 of (pair_id, annotator, decided_at, origin)
        _f("pair_id", pa.string(), False),
        _f("task", pa.string()),
        _f("subtask", pa.string()),
        _f("annotator", pa.string(), False),
        _f("queue", pa.string()),
        _f("decision", pa.string(), False),  # one of REVIEW_DECISIONS
        _f("instruction", pa.string()),  # the accepted or corrected text (accept / edit)
        _f("chosen_variant", pa.int32()),  # instructions.variant accepted (accept), else null
        _f("chosen_method", pa.string()),  # that variant's method, or "human" for an edit
        _f("reject_reason", pa.string()),  # short code from the review tool's list (reject)
        _f("comment", pa.string()),
        _f("shown", pa.string()),  # JSON: the candidates shown to the annotator, in order
        _f("decided_at", pa.timestamp("us", tz="UTC"), False),
        _f("origin", pa.string(), False),  # review_app | label_studio
    ]
)

# Where each image of an images table lives, so a reader fetches a few rows without scanning:
# one small file per shard under `<images table>/.index/` (see acedata/image_index.py).
IMAGE_INDEX = pa.schema(
    [
        _f("image_id", pa.string(), False),
        _f("shard", pa.string(), False),  # shard file name, relative to the images table folder
        _f("row_group", pa.int32(), False),
        _f("row", pa.int32(), False),  # row within the row group
        _f("width", pa.int32()),
        _f("height", pa.int32()),
        _f("kind", pa.string()),
        _f("source_uri", pa.string()),  # lets a reader skip rows listed as duplicates of a kept copy
    ]
)

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "image_index": IMAGE_INDEX,
    "quarantine": QUARANTINE,
    "duplicates": DUPLICATES,
    "clusters": CLUSTERS,
    "pairs": PAIRS,
    "instructions": INSTRUCTIONS,
    "lcu": LCU,
    "reviews": REVIEWS,
}


def schema_for(table: str, **kw: Any) -> pa.Schema:
    """The schema of a table by name (embeddings needs `dim`)."""
    if table == "embeddings":
        return with_hf_metadata(embeddings_schema(kw["dim"]))
    try:
        return with_hf_metadata(TABLES[table])
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {sorted([*TABLES, 'embeddings'])}") from None


# --- Hugging Face `datasets` features metadata ----------------------------------


def _feature(typ: pa.DataType, image_hint: bool) -> Any:
    if image_hint:
        return {"_type": "Image"}
    if pa.types.is_struct(typ):
        return {f.name: _feature(f.type, f.type == IMAGE) for f in typ}
    if pa.types.is_fixed_size_list(typ):
        return {"_type": "List", "feature": _feature(typ.value_type, False), "length": typ.list_size}
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return {"_type": "List", "feature": _feature(typ.value_type, typ.value_type == IMAGE)}
    dtype = {
        pa.string(): "string",
        pa.large_string(): "large_string",
        pa.binary(): "binary",
        pa.float16(): "float16",
        pa.float32(): "float32",
        pa.float64(): "float64",
        pa.int32(): "int32",
        pa.int64(): "int64",
        pa.bool_(): "bool",
        pa.timestamp("us", tz="UTC"): "timestamp[us, tz=UTC]",
    }[typ]
    return {"dtype": dtype, "_type": "Value"}


def hf_features(schema: pa.Schema) -> dict[str, Any]:
    """`datasets` features for a schema: every IMAGE struct becomes an Image feature."""
    return {f.name: _feature(f.type, f.type == IMAGE) for f in schema}


_WITH_HF: dict[int, tuple[pa.Schema, pa.Schema]] = {}  # id(schema) -> (schema, result)


def with_hf_metadata(schema: pa.Schema) -> pa.Schema:
    # Memoised by identity: every unit commit asks for it per table, and the features JSON of a
    # wide schema was ~0.2 ms each time. The entry holds the schema, so its id is not reused.
    hit = _WITH_HF.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    meta = dict(schema.metadata or {})
    meta[b"huggingface"] = json.dumps({"info": {"features": hf_features(schema)}}).encode()
    meta[b"acedata.schema_version"] = SCHEMA_VERSION.encode()
    out = schema.with_metadata(meta)
    if len(_WITH_HF) < 256:  # module-level schemas; a process making schemas on the fly stops caching
        _WITH_HF[id(schema)] = (schema, out)
    return out


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Order, fill (with nulls) and cast a table's columns to `schema`.

    Missing nullable columns are filled with nulls; extra columns are an error, so a
    typo in a stage never silently drops data.
    """
    if table.schema.equals(schema):  # the usual case (rows built with the schema): no casts
        return pa.Table.from_arrays(table.columns, schema=schema)
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise ValueError(f"columns not in schema: {sorted(extra)}")
    cols = []
    for field in schema:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        elif field.nullable:
            cols.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"required column {field.name!r} missing")
    return pa.Table.from_arrays(cols, schema=schema)
