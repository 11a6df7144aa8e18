"""Ray jobs on a cluster: submit a pipeline spec or a training run, watch, stop.

A thin layer over Ray's Job Submission API (HTTP, the dashboard port, 8265 by default):

* the address comes from `--address` or `$RAY_ADDRESS` (`http://HEAD:8265`);
* token authentication: Ray (>= 2.52) enforces a bearer token on every dashboard and
  job request when the cluster runs with `RAY_AUTH_MODE=token` (the default for new
  clusters in current Ray). The token is looked up the way Ray looks it up —
  `$RAY_AUTH_TOKEN`, else the file named by `$RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`
  — and sent as `Authorization: Bearer ...`; `RAY_AUTH_MODE=disabled` sends none;
* code travels either as this checkout's packages (`runtime_env.py_modules`, the default:
  what you run is what you edited) or not at all (`code="installed"`: the cluster image has
  acedata installed). Either way a small staging `working_dir` carries the spec and the
  entrypoint, so a spec anywhere on the client machine can be submitted;
* a submitted pipeline prints its run status as `ACEDATA-STATUS {json}` lines (see
  `pipeline.RunStatus`), so `status` shows the stage in progress and the counts so far
  from the job's log alone, with no access to the output location needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from acedata.errors import UserError
from acedata.job_connect import (  # noqa: F401 - re-exported: `acedata.jobs` is the one place callers import
    INSECURE_FLAG,
    _call,
    auth_token,
    check_token_transport,
    client,
    resolve_address,
)
from acedata.job_watch import (  # noqa: F401 - re-exported
    STATUS_PREFIX,
    TERMINAL,
    follow_logs,
    job_logs,
    job_status,
    last_status,
    list_jobs,
    stop_job,
    wait_for,
)

log = logging.getLogger("acedata")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Packages shipped with `code="project"`; the trainer's package is shipped when it is there.
PROJECT_PACKAGES = [PROJECT_ROOT / "acedata", PROJECT_ROOT / "model" / "acemodel"]
SHIP_EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache", "*.egg-info"]


# --- submission ---------------------------------------------------------------------


def _job_id(kind: str, name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or kind
    return f"acedata-{kind}-{slug}-{uuid.uuid4().hex[:8]}"


def _check_out(path: str, what: str = "--out") -> None:
    if "://" not in path and not os.path.isabs(path):
        raise UserError(
            f"{what} {path!r}: give an absolute path or a URI (s3://, gs://, file://) that every cluster "
            "node can reach; a relative path would land in the job's temporary working directory"
        )


def _stage_dir(spec: str | None, plugins: list[str]) -> tuple[str, str | None, list[str]]:
    """A temporary working_dir with the entrypoint, the spec and plugin modules."""
    d = tempfile.mkdtemp(prefix="acedata-job-")
    entry = PROJECT_ROOT / "jobs" / "run_pipeline.py"
    if entry.is_file():
        shutil.copy(entry, os.path.join(d, "run_pipeline.py"))
    spec_name = None
    if spec is not None:
        if not os.path.isfile(spec):
            raise UserError(f"pipeline spec {spec!r} not found")
        spec_name = "spec-" + os.path.basename(spec)
        shutil.copy(spec, os.path.join(d, spec_name))
    modules = []
    for p in plugins:
        if not (p.endswith(".py") and os.path.isfile(p)):
            raise UserError(f"--plugin {p!r}: give a .py file that defines extra stages")
        shutil.copy(p, os.path.join(d, os.path.basename(p)))
        modules.append(os.path.basename(p)[:-3])
    return d, spec_name, modules


def _runtime_env(working_dir: str, code: str, env_vars: dict[str, str] | None) -> dict[str, Any]:
    if code not in ("project", "installed"):
        raise UserError(f"--code {code!r}: choose 'project' (ship this checkout) or 'installed'")
    env: dict[str, Any] = {"working_dir": working_dir, "excludes": SHIP_EXCLUDES}
    if code == "project":
        env["py_modules"] = [str(p) for p in PROJECT_PACKAGES if p.is_dir()]
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def _import_plugin(path: str) -> None:
    """Import a plugin file here too, so its stages validate before anything is submitted."""
    import importlib.util

    name = os.path.basename(path)[:-3]
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _check_spec(spec: str, out: str, plugins: list[str], full: bool):
    """Fail on a bad spec here rather than minutes later on the cluster.

    With `full`, every stage config is validated against this checkout's stages (the code
    that will run); with an installed package on the cluster only the spec's shape is checked.
    """
    from acedata.pipeline import PipelineSpec, load_spec

    if not os.path.isfile(spec):
        raise UserError(f"pipeline spec {spec!r} not found")
    if full:
        for p in plugins:
            if p.endswith(".py") and os.path.isfile(p):
                _import_plugin(p)
        return load_spec(spec, {"out": out})[0]
    import yaml

    from acedata.config import validate_model

    with open(spec, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise UserError(f"{spec}: not valid YAML ({str(e).splitlines()[0]})") from None
    return validate_model(PipelineSpec, data, os.path.basename(spec))


def submit_pipeline(
    spec: str,
    out: str,
    address: str | None = None,
    code: str = "project",
    plugins: list[str] | None = None,
    env_vars: dict[str, str] | None = None,
    python: str = "python",
    job_id: str | None = None,
) -> str:
    """Submit a pipeline spec to run on the cluster, writing under `out`; returns the job id.

    Submitting the same spec and `out` again resumes: finished stages are skipped and an
    interrupted stage keeps its committed units.
    """
    _check_out(out)
    spec_obj = _check_spec(spec, out, plugins or [], full=code == "project")
    c = client(address)
    wd, spec_name, modules = _stage_dir(spec, plugins or [])
    try:
        has_entry = os.path.isfile(os.path.join(wd, "run_pipeline.py"))
        entry = ["run_pipeline.py"] if has_entry else ["-m", "acedata.jobs", "pipeline"]
        args = [python, *entry, spec_name, "--out", out, *[a for m in modules for a in ("--plugin", m)]]
        jid = job_id or _job_id("pipeline", spec_obj.name)
        return _call(
            c.submit_job,
            entrypoint=" ".join(_quote(a) for a in args),
            submission_id=jid,
            runtime_env=_runtime_env(wd, code, env_vars),
            metadata={"acedata": "pipeline", "spec": spec_obj.name, "out": out},
        )
    finally:
        shutil.rmtree(wd, ignore_errors=True)  # the runtime_env package is uploaded at submit


def submit_training(
    config: str,
    data: list[str],
    out: str,
    address: str | None = None,
    overrides: dict[str, Any] | None = None,
    code: str = "project",
    env_vars: dict[str, str] | None = None,
    python: str = "python",
    job_id: str | None = None,
) -> str:
    """Submit a training run (jobs/train.py, Ray Train on the cluster); returns the job id.

    `config` is a training YAML on this machine; `overrides`, when given, is the complete
    effective config (the YAML plus command-line overrides) and is shipped instead.
    `data` and `out` are read and written on the cluster: absolute paths or URIs.
    """
    import yaml

    for path in data:
        _check_out(path, "--data")
    _check_out(out)
    if not os.path.isfile(config):
        raise UserError(f"training config {config!r} not found")
    c = client(address)
    wd = tempfile.mkdtemp(prefix="acedata-job-")
    try:
        cfg_name = "train-config.yaml"
        if overrides is not None:
            with open(os.path.join(wd, cfg_name), "w", encoding="utf-8") as f:
                yaml.safe_dump(overrides, f, sort_keys=False)
        else:
            shutil.copy(config, os.path.join(wd, cfg_name))
        entry = PROJECT_ROOT / "jobs" / "train.py"
        if entry.is_file():
            shutil.copy(entry, os.path.join(wd, "train.py"))
            args = [python, "train.py", cfg_name, "--data", *data, "--out", out]
        else:  # an installed acedata without the jobs/ folder: the train command attaches itself
            args = [python, "-m", "acedata", "train", cfg_name, "--data", *data, "--out", out, "--address", "auto"]
        return _call(
            c.submit_job,
            entrypoint=" ".join(_quote(a) for a in args),
            submission_id=job_id or _job_id("train", os.path.splitext(os.path.basename(config))[0]),
            runtime_env=_runtime_env(wd, code, env_vars),
            metadata={"acedata": "train", "config": os.path.basename(config), "out": out},
        )
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# --- the job side: what a submitted pipeline runs ---------------------------------------


def pipeline_entry(argv: list[str] | None = None) -> int:
    """Run a pipeline inside a Ray job: attach to the job's cluster, print status lines."""
    p = argparse.ArgumentParser(prog="run_pipeline.py", description="Run an acedata pipeline spec as a Ray job.")
    p.add_argument("spec")
    p.add_argument("--out", required=True)
    p.add_argument("--plugin", action="append", default=[], help="module with extra stages (in the working dir)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import importlib

    sys.path.insert(0, os.getcwd())
    for m in args.plugin:
        importlib.import_module(m)

    def on_status(body: dict[str, Any]) -> None:
        print(STATUS_PREFIX + json.dumps(body, separators=(",", ":")), flush=True)

    def stop(signum, frame):  # `ray job stop` sends SIGTERM: record "interrupted", then exit
        raise KeyboardInterrupt(f"signal {signum}")

    # (once attached, Ray's own SIGTERM handler raises SystemExit instead; handled the same)
    signal.signal(signal.SIGTERM, stop)
    from acedata.pipeline import run_pipeline

    try:
        run = run_pipeline(args.spec, args.out, on_status=on_status)
    except UserError as e:
        print(f"acedata job: error: {e}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, SystemExit):
        print("acedata job: stopped; committed work is kept, submit again to resume", file=sys.stderr, flush=True)
        return 130
    for s in run["stages"]:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(s.get("counts", {}).items()))
        print(f"stage {s['name']}: {'skipped (complete)' if s.get('skipped') else 'done'}  {counts}", flush=True)
    print(f"acedata job: finished -> {run['out']}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["pipeline"]:
        sys.exit(pipeline_entry(sys.argv[2:]))
    print("usage: python -m acedata.jobs pipeline SPEC --out OUT [--plugin MODULE]", file=sys.stderr)
    sys.exit(2)
