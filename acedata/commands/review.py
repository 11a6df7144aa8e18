"""`acedata review RUN`: the human review web app, its accounts, queues and exports."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="serve the review web app for a run (accounts, queues, export of decisions)",
        description="Without an action: serve the review app on 127.0.0.1. Decisions live in a database "
        "(SQLite at RUN/review/review.db unless --db names a SQLAlchemy URL such as "
        "postgresql+psycopg://user:pw@host/db) and `export` appends them to RUN/review/reviews. "
        "Binding beyond loopback needs --allow-remote plus TLS (--ssl-certfile/--ssl-keyfile) or "
        "--behind-https-proxy, and an admin account.",
    )
    p.add_argument("run_dir", help="run directory with pairs, instructions and images tables")
    p.add_argument("--db", help="SQLAlchemy URL of the review database (default: sqlite in RUN/review/)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--lease", type=int, default=900, help="seconds before an unfinished claim returns to the queue")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--ssl-certfile")
    p.add_argument("--ssl-keyfile")
    p.add_argument("--behind-https-proxy", action="store_true",
                   help="TLS is terminated by a reverse proxy in front (cookies are still marked Secure)")
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    u = acts.add_parser("add-user", help="create an account (or reset its password and role)")
    u.add_argument("name")
    u.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    u.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable "
                   "(default: generate one and print it)")
    q = acts.add_parser("queue", help="build a review queue from the run's items")
    q.add_argument("name")
    q.add_argument("--by", choices=["task", "method", "random", "stratified"], default="random")
    q.add_argument("--task")
    q.add_argument("--subtask")
    q.add_argument("--method")
    q.add_argument("--size", type=int, help="at most this many items")
    q.add_argument("--overlap", type=float, default=0.0, help="fraction of items given to two annotators")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--allow-repeat", action="store_true", help="include pairs already in another queue")
    acts.add_parser("export", help="append the database's decisions to RUN/review/reviews (idempotent)")
    acts.add_parser("stats", help="print progress, reject reasons and agreement as JSON")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from acedata.errors import UserError
    from acedata.review import store

    engine = store.connect(args.db or store.default_url(args.run_dir))
    if args.action == "add-user":
        pw = os.environ.get(args.password_env) if args.password_env else None
        if args.password_env and not pw:
            raise UserError(f"environment variable {args.password_env} is empty or unset")
        shown = pw is None
        pw = pw or secrets.token_urlsafe(12)
        store.add_user(engine, args.name, args.role, pw)
        print(f"user {args.name} ({args.role})" + (f" password: {pw}" if shown else ""))
        return 0
    if args.action == "export":
        from acedata.review.stats import export_to_run

        got = export_to_run(engine, args.run_dir)
        print(f"{got['new']} new of {got['decisions']} decisions -> {args.run_dir.rstrip('/')}/review/reviews")
        return 0
    if args.action == "stats":
        import json

        from acedata.review.stats import summary

        print(json.dumps(summary(engine), indent=1, default=str))
        return 0
    from acedata.review.catalog import Catalog

    catalog = Catalog(args.run_dir)
    if args.action == "queue":
        from pydantic import ValidationError

        from acedata.review.queues import QueueSpec, build

        try:
            spec = QueueSpec(by=args.by, task=args.task, subtask=args.subtask, method=args.method, size=args.size,
                             overlap=args.overlap, seed=args.seed, allow_repeat=args.allow_repeat)
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"queue option --{err['loc'][0]}: {err['msg']}") from None
        got = build(engine, args.name, catalog.facets(), spec, created_by="cli")
        print(f"queue {args.name}: {got['items']} items, {got['copies']} copies (overlap {args.overlap})")
        return 0
    return _serve(args, engine, catalog)


def _serve(args: argparse.Namespace, engine, catalog) -> int:
    import uvicorn

    from acedata.errors import UserError
    from acedata.review import store
    from acedata.review.app import Ctx, create_app

    tls = bool(args.ssl_certfile and args.ssl_keyfile)
    if not _is_loopback(args.host):
        if not args.allow_remote:
            raise UserError(f"--host {args.host} is not loopback; add --allow-remote (and TLS) to serve a network")
        if not (tls or args.behind_https_proxy):
            raise UserError("serving beyond loopback needs TLS: --ssl-certfile and --ssl-keyfile, "
                            "or --behind-https-proxy when a proxy terminates TLS")
        if store.count_users(engine, "admin") == 0:
            raise UserError("no admin account; add one with `acedata review RUN add-user NAME --role admin`")
    if store.count_users(engine) == 0:
        raise UserError(f"no accounts yet; add one with `acedata review {args.run_dir} add-user NAME --role admin`")
    app = create_app(Ctx(engine, catalog, args.run_dir, lease_s=args.lease,
                         secure_cookies=tls or args.behind_https_proxy))
    scheme = "https" if tls else "http"
    print(f"review app: {len(catalog)} items, {len(catalog.served)} images -> {scheme}://{args.host}:{args.port}/",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ssl_certfile=args.ssl_certfile,
                ssl_keyfile=args.ssl_keyfile, timeout_graceful_shutdown=5)
    sys.stdout.flush()
    return 0
