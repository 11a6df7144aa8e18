"""The demo pipeline with its output on S3 against the same demo on local disk.

Both runs use the same corpus (local), the same spec and the CLI (`acedata run`, an embedded
Ray each), one after the other on this machine; the S3 side is moto's S3-compatible server on
loopback (tests/s3_server.py), so the ratio is the cost of the storage layer and the S3 wire
protocol (uploads, listings, HEADs), not of network distance to a real region.

    .venv/bin/python bench/storage.py [--variants 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from s3_server import S3Server


def run(args: list[str], cwd: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "acedata", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise SystemExit(f"acedata {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=4, help="images per corpus group (demo-data default: 4)")
    a = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "model")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0")
    server = S3Server(bucket="acedata-bench")
    with tempfile.TemporaryDirectory() as tmp:
        server.start(os.path.join(tmp, "moto.log"))
        try:
            env.update(server.env())
            corpus = os.path.join(tmp, "corpus")
            run(["demo-data", "--out", corpus, "--variants", str(a.variants)], tmp, env)
            with open(os.path.join(ROOT, "pipelines", "demo.yaml"), encoding="utf-8") as f:
                spec = f.read().replace('"${out}/corpus"', json.dumps(corpus))
            spec_path = os.path.join(tmp, "demo.yaml")
            with open(spec_path, "w", encoding="utf-8") as f:
                f.write(spec)
            local = run(["run", spec_path, "--out", os.path.join(tmp, "local")], tmp, env)
            print(f"demo, output on local disk: {local:.1f} s", flush=True)
            s3 = run(["run", spec_path, "--out", f"s3://{server.bucket}/demo"], tmp, env)
            print(f"demo, output on S3: {s3:.1f} s", flush=True)
        finally:
            server.stop()
    print(json.dumps({"demo_local_s": round(local, 1), "demo_s3_s": round(s3, 1),
                      "s3_over_local": round(s3 / local, 3)}))


if __name__ == "__main__":
    main()
