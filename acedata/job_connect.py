"""Talking to a Ray cluster's job server: the address, the auth token and how it may travel, one client.

Ray (>= 2.52) enforces a bearer token on every dashboard and job request when the cluster runs
with `RAY_AUTH_MODE=token`. The token is looked up the way Ray looks it up — `$RAY_AUTH_TOKEN`,
else the file named by `$RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token` — and sent as
`Authorization: Bearer ...` only over https or to a loopback address unless the user says the
network is trusted; `RAY_AUTH_MODE=disabled` sends none.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from acedata.errors import UserError


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError(
            "no Ray cluster to talk to: pass --address http://HEAD:8265 or set RAY_ADDRESS "
            "(`acedata run` runs on an embedded local Ray instead)"
        )
    return address


def auth_token() -> str | None:
    """The Ray auth token, found where Ray itself looks; None when there is none or auth is off."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token ({e.strerror})") from None
        if not token:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: the token file is empty")
        return token
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


# Set by `--insecure-trusted-network`: send the token over plain http to any host.
TRUST_PLAIN_HTTP = False
INSECURE_FLAG = "--insecure-trusted-network"


def _loopback(host: str) -> bool:

    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token_transport(address: str, token: str | None) -> None:
    """Refuse to send a bearer token in clear text across a network, unless told it is trusted."""
    from urllib.parse import urlsplit

    if not token or TRUST_PLAIN_HTTP:
        return
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme == "https" or _loopback(parts.hostname or ""):
        return
    raise UserError(f"refusing to send the Ray auth token in clear text to {address}: use https://, a loopback "
                    f"address (e.g. through an SSH tunnel), or pass {INSECURE_FLAG} if this network is trusted")


def client(address: str | None = None):
    """A JobSubmissionClient for the cluster, with the auth token when there is one."""
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    token = auth_token()
    check_token_transport(address, token)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        c = JobSubmissionClient(address, headers=headers)
        c._acedata_address = address  # for error messages
        return c
    except Exception as e:  # noqa: BLE001 - connection/auth failures become one line
        raise UserError(_connect_error(address, e, token is not None)) from None


def _connect_error(address: str, e: Exception, sent_token: bool) -> str:
    text = str(e)
    if "401" in text or "Authentication required" in text:
        return (f"the Ray cluster at {address} wants an auth token and none was found: set RAY_AUTH_TOKEN "
                "or RAY_AUTH_TOKEN_PATH (on the head node: `ray get-auth-token`)")
    if "403" in text or "Authentication failed" in text:
        return (f"the Ray cluster at {address} refused the auth token "
                f"({'sent' if sent_token else 'none sent'}); check RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"cannot reach the Ray job server at {address}: {first[:300]}"


def _call(fn, *args, **kw):
    """Run a client call; a job that does not exist or a dropped connection is one line."""
    try:
        return fn(*args, **kw)
    except RuntimeError as e:
        text = str(e)
        if "Authentication required" in text or "Authentication failed" in text:
            where = getattr(getattr(fn, "__self__", None), "_acedata_address", "?")
            raise UserError(_connect_error(where, e, auth_token() is not None)) from None
        if "does not exist" in text or "404" in text:
            job = args[0] if args else kw.get("job_id", "?")
            raise UserError(f"no job {job!r} on this cluster (see `acedata jobs list`)") from None
        raise UserError(text.strip().splitlines()[0][:300]) from None
    except OSError as e:
        raise UserError(f"lost the connection to the Ray job server: {e}") from None


