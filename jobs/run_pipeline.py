"""Entrypoint of a submitted pipeline job (`acedata submit` ships and runs it).

    python run_pipeline.py SPEC --out OUT [--plugin MODULE ...]

Runs on the cluster inside a Ray job: attaches to the job's cluster ($RAY_ADDRESS is set
by Ray), runs the spec's stages (resuming from what OUT already holds) and prints
`ACEDATA-STATUS {json}` lines that `acedata jobs status` reads. Also usable by hand with
`ray job submit --working-dir DIR -- python run_pipeline.py ...`.
"""

from __future__ import annotations

import sys

from acedata.jobs import pipeline_entry

if __name__ == "__main__":
    sys.exit(pipeline_entry())
