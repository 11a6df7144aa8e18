"""Which Ray a run uses, decided by Ray's own rules and said in one line.

`ray.init()` with no address attaches to `$RAY_ADDRESS`, else to the cluster a `ray start`
on this machine recorded in `<ray temp dir>/ray_current_cluster`, else starts a new local
instance. We follow the same order, with two differences that keep a run from crashing:

- attaching never passes `num_cpus` (Ray refuses it for an existing cluster);
- a recorded cluster that no longer answers (a stale file after a crash) is reported and a
  private embedded instance is started instead of failing to connect.

`--address local` (Ray's own spelling) always starts a private embedded instance.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass

log = logging.getLogger("acedata")


@dataclass(frozen=True)
class RayTarget:
    address: str | None  # GCS host:port to attach to; None: start a private embedded instance
    why: str  # where the decision came from, for the one-line report
    discovered: bool = False  # found through ray_current_cluster, as ray.init() finds it


def _current_cluster_file() -> str:
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def _reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def choose(address: str | None) -> RayTarget:
    """Decide where to run: an explicit address, $RAY_ADDRESS, a `ray start` cluster, or private."""
    origin = "--address"
    if not address and os.environ.get("RAY_ADDRESS"):
        address, origin = os.environ["RAY_ADDRESS"], "$RAY_ADDRESS"
    if address == "local":
        return RayTarget(None, f"{origin} local")
    if address and address.startswith(("http://", "https://")):
        # A job-server URL (what `acedata submit` and `ray job` use) cannot host this driver.
        log.warning("%s is a Ray job server address: use `acedata submit` to run on that cluster, "
                    "or give its GCS address (HEAD:6379)", address)
        return RayTarget(None, f"{origin} is a job-server URL")
    if address:
        return RayTarget(address, origin)
    path = _current_cluster_file()
    try:
        with open(path) as f:
            recorded = f.read().strip()
    except OSError:
        return RayTarget(None, "no running cluster found")
    if recorded and _reachable(recorded):
        return RayTarget(recorded, f"the cluster `ray start` recorded in {path}", discovered=True)
    return RayTarget(None, f"{path} names {recorded or 'nothing'}, which does not answer")


def start(address: str | None = None, num_cpus: int | None = None) -> RayTarget:
    """Attach or start Ray as `choose` decides, and print one line saying which."""
    import ray

    target = choose(address)
    if target.address:
        if num_cpus:
            log.debug("num_cpus=%s ignored: an existing cluster brings its own resources", num_cpus)
        # A discovered cluster is attached the way ray.init() attaches it ("auto"), which also
        # picks up the token of a token-auth cluster from ~/.ray/auth_token; an explicit
        # address is passed as given (Ray then expects RAY_AUTH_MODE/RAY_AUTH_TOKEN from the user).
        try:
            ray.init(address="auto" if target.discovered else target.address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            from acedata.errors import UserError

            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot attach to the Ray cluster at {target.address} ({target.why}): {first}; "
                            "`--address local` runs on a private embedded Ray instead") from None
        line = f"ray: attached to the cluster at {target.address} ({target.why})"
    else:
        cpus = num_cpus or max(2, os.cpu_count() or 2)
        # address="local" so Ray itself never attaches behind our back; keep it on 127.0.0.1
        # (Ray otherwise rewrites loopback to the NIC address).
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )
        line = f"ray: started a private embedded instance with {cpus} CPUs ({target.why})"
    print(line, file=sys.stderr, flush=True)
    return target
