"""The job client never sends the Ray auth token in clear text across a network by accident."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from acedata import cli, job_connect, jobs
from acedata.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://localhost:8265", "127.0.0.5:8265",
                                     "http://[::1]:8265", "https://head.example.com:8265", "https://10.1.2.3"])
def test_loopback_or_https_may_carry_the_token(address, monkeypatch):
    monkeypatch.setattr(job_connect, "TRUST_PLAIN_HTTP", False)
    jobs.check_token_transport(address, "secret")


@pytest.mark.parametrize("address", ["http://10.1.2.3:8265", "10.1.2.3:8265", "http://head.example.com:8265"])
def test_plain_http_to_a_network_host_is_refused(address, monkeypatch):
    monkeypatch.setattr(job_connect, "TRUST_PLAIN_HTTP", False)
    with pytest.raises(UserError, match="--insecure-trusted-network"):
        jobs.check_token_transport(address, "secret")
    jobs.check_token_transport(address, None)  # no token, nothing to leak
    monkeypatch.setattr(job_connect, "TRUST_PLAIN_HTTP", True)
    jobs.check_token_transport(address, "secret")


def test_cli_refuses_in_one_line_before_connecting(tmp_path):
    env = dict(os.environ, RAY_AUTH_TOKEN="0" * 64, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "model")]))
    env.pop("RAY_AUTH_MODE", None)
    # 192.0.2.1 (TEST-NET-1) is never reachable: a connection attempt would hang, not fail fast
    r = subprocess.run([sys.executable, "-m", "acedata", "jobs", "list", "--address", "http://192.0.2.1:8265"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "refusing to send the Ray auth token in clear text" in lines[0] and "--insecure-trusted-network" in lines[0]


def test_flag_is_on_every_job_server_command():
    parser = cli.build_parser()
    for argv in (["submit", "spec.yaml", "--out", "/x"], ["jobs", "list"], ["train", "c.yaml", "--submit"]):
        assert parser.parse_args([*argv, "--insecure-trusted-network"]).insecure_trusted_network is True
