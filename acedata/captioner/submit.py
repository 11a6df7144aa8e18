"""`acedata train-captioner ... --submit`: the training run as a Ray job on a cluster
(entrypoint: `python -m acedata train-captioner CONFIG --data D --out O --address auto`,
with the effective config shipped in the job's working directory)."""

from __future__ import annotations

import shutil
import tempfile

from acedata import jobs


def submit(config: dict, data: str, out: str, address: str | None = None, evaluate: bool = True,
           code: str = "project", env_vars: dict[str, str] | None = None) -> str:
    import os

    import yaml

    jobs._check_out(data, "--data")
    jobs._check_out(out)
    c = jobs.client(address)
    wd = tempfile.mkdtemp(prefix="acedata-job-")
    try:
        with open(os.path.join(wd, "captioner-config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        args = ["python", "-m", "acedata", "train-captioner", "captioner-config.yaml", "--data", data, "--out", out,
                "--address", "auto", *([] if evaluate else ["--no-eval"])]
        return jobs._call(
            c.submit_job,
            entrypoint=" ".join(jobs._quote(a) for a in args),
            submission_id=jobs._job_id("train-captioner", os.path.basename(out.rstrip("/"))),
            runtime_env=jobs._runtime_env(wd, code, env_vars),
            metadata={"acedata": "train-captioner", "out": out},
        )
    finally:
        shutil.rmtree(wd, ignore_errors=True)
