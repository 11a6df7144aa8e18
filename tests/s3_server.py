"""An S3-compatible server for tests: moto's standalone server, a separate process on loopback.

It speaks the real S3 REST protocol, so pyarrow's S3FileSystem, boto3 and every worker
process reach it exactly as they would reach AWS or MinIO: through the standard
`AWS_ENDPOINT_URL` / `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_DEFAULT_REGION`
environment variables (`env()`), never through acedata settings. Stopped by its PID.

What it does not emulate (see README): AWS's eventual-consistency history, latency and
throughput, request-rate throttling (503 SlowDown), multipart part-size limits, IAM
policies and real signature checks — credentials are accepted as given.

Run by hand: `.venv/bin/python tests/s3_server.py` prints the env to export until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

MOTO = os.path.join(os.path.dirname(sys.executable), "moto_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    bucket: str = "acedata-test"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no IMDS probe for credentials/region
        }

    def start(self, log_path: str = os.devnull) -> S3Server:
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [MOTO, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode} (log: {log_path})")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).read()
                break
            except OSError:
                time.sleep(0.3)
        else:
            self.stop()
            raise RuntimeError("moto_server did not answer within 60 s")
        self.create_bucket(self.bucket)
        return self

    def client(self):
        import boto3

        e = self.env()
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=e["AWS_DEFAULT_REGION"],
                            aws_access_key_id=e["AWS_ACCESS_KEY_ID"], aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix` in the bucket."""
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


if __name__ == "__main__":
    server = S3Server().start()
    for k, v in server.env().items():
        print(f"export {k}={v}")
    print(f"# bucket: s3://{server.bucket}  (Ctrl-C stops the server)")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
