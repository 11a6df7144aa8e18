"""Image id schemes: which hash turns an image's size and RGB pixels into its `image_id`.

- `sha256` (v1): sha256 over "WxH:" + the packed pixels, 64 lowercase hex characters.
- `xxh3-128` (v2, the default for new runs): xxh3_128 over the same bytes, 32 lowercase hex
  characters. At 768 px sha256 cost about 0.6 of a bare Pillow decode; xxh3 a small fraction.

The two are told apart by length alone. Both stay lowercase hex on purpose: ids name files and
URLs as before, and code that reads an id's leading hex digits as a number (synthesize seeds
its generators from `int(image_id[:12], 16)`) works for either scheme; a non-hex prefix would
have broken that, a length does not.

A run pins its scheme when its directory is created (`RUN/_settings.json`, see
`acedata.pipeline`); every stage of the run computes ids in it (`RunContext.id_scheme`, made
current around each unit by `acedata.runtime`), so one run never mixes schemes. A run directory
made before schemes existed has no record and is `sha256`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator
from typing import Literal

import xxhash

SHA256 = "sha256"
XXH3_128 = "xxh3-128"
IdScheme = Literal["sha256", "xxh3-128"]
SCHEMES: tuple[str, ...] = (SHA256, XXH3_128)
DEFAULT = XXH3_128  # new runs
LEGACY = SHA256  # run directories recorded before schemes existed
ID_LENGTH = {SHA256: 64, XXH3_128: 32}

_current: contextvars.ContextVar[str] = contextvars.ContextVar("acedata_id_scheme", default=DEFAULT)


def check(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown image id scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return scheme


def hasher(scheme: str):
    """A fresh hash object (`update`, `hexdigest`) for `scheme`."""
    return xxhash.xxh3_128() if check(scheme) == XXH3_128 else hashlib.sha256()


def current() -> str:
    """The scheme ids are computed in here: the running stage's (`using`), else the default.

    Outside a stage (library calls, tests) that is the default for new runs; every command that
    works on an existing run passes the run's recorded scheme to its `RunContext`."""
    return _current.get()


@contextlib.contextmanager
def using(scheme: str) -> Iterator[None]:
    """Compute ids in `scheme` inside the block (a stage's units: `acedata.runtime`)."""
    token = _current.set(check(scheme))
    try:
        yield
    finally:
        _current.reset(token)


def scheme_of(image_id: str) -> str | None:
    """The scheme an id was made in, from its shape; None when it is neither's."""
    n = len(image_id)
    for scheme, length in ID_LENGTH.items():
        if n == length and all(c in "0123456789abcdef" for c in image_id):
            return scheme
    return None
