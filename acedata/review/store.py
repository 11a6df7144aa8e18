"""The review database: accounts, sessions, queues, claims and decisions (SQLAlchemy Core).

SQLite in WAL mode at RUN/review/review.db is the embedded default; any SQLAlchemy URL
(`postgresql+psycopg://...`) serves a team. Every write is one short transaction that
is committed before the HTTP response is sent, so an acknowledged decision survives a
killed server. SQLite transactions start with BEGIN IMMEDIATE (one writer at a time,
no lock-upgrade deadlocks); on PostgreSQL claims are compare-and-set updates.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import os
import secrets
from typing import Any

import sqlalchemy as sa

from acedata.errors import UserError

ROLES = ("annotator", "admin")
SESSION_HOURS = 12

meta = sa.MetaData()
users = sa.Table(
    "users", meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("pw_hash", sa.String(256), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
sessions = sa.Table(
    "sessions", meta,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # sha256 of the bearer token; the token is never stored
    sa.Column("user", sa.String(64), sa.ForeignKey("users.name"), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)
queues = sa.Table(
    "queues", meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # JSON: how it was built (by, filters, seed, overlap)
    sa.Column("created_by", sa.String(64)),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
# One row per copy of an item: overlap items have two slots, so two annotators review them.
slots = sa.Table(
    "slots", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(64), sa.ForeignKey("queues.name"), nullable=False),
    sa.Column("pair_id", sa.String(200), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("copy", sa.Integer, nullable=False),
    sa.Column("task", sa.String(64)),
    sa.Column("subtask", sa.String(64)),
    sa.Column("annotator", sa.String(64)),  # holder of the claim, or who completed it
    sa.Column("lease_until", sa.DateTime),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
    # NULLs are distinct, so this only stops one annotator holding two copies of an item.
    sa.UniqueConstraint("queue", "pair_id", "annotator", name="one_copy_per_annotator"),
    sa.UniqueConstraint("queue", "pair_id", "copy", name="copies"),
    sa.Index("slots_next", "queue", "done", "position"),
)
decisions = sa.Table(
    "decisions", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("review_id", sa.String(32), nullable=False, unique=True),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("pair_id", sa.String(200), nullable=False),
    sa.Column("task", sa.String(64)),
    sa.Column("subtask", sa.String(64)),
    sa.Column("annotator", sa.String(64), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("instruction", sa.Text),
    sa.Column("chosen_variant", sa.Integer),
    sa.Column("chosen_method", sa.String(32)),
    sa.Column("reject_reason", sa.String(32)),
    sa.Column("comment", sa.Text),
    sa.Column("shown", sa.Text, nullable=False),  # JSON of the candidates on screen, in order
    sa.Column("decided_at", sa.DateTime, nullable=False),  # naive UTC (SQLite keeps no zone)
    sa.Index("decisions_by_annotator", "queue", "annotator"),
    sa.Index("decisions_by_pair", "pair_id"),
)


READ_ONLY = "acedata_read_only"


def reading(engine: sa.Engine) -> sa.Connection:
    """A connection for reads only (a deferred transaction on SQLite)."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def utcnow() -> dt.datetime:
    """Naive UTC with microseconds: what both SQLite and PostgreSQL store unchanged."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def default_url(run_dir: str) -> str:
    if "://" in run_dir:
        raise UserError("a run on object storage needs --db URL (the SQLite default lives beside a local run)")
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir!r} does not exist")
    d = os.path.join(os.path.abspath(run_dir), "review")
    os.makedirs(d, exist_ok=True)
    return "sqlite:///" + os.path.join(d, "review.db")


def connect(url: str) -> sa.Engine:
    """An engine with the tables created; SQLite gets WAL, full sync and IMMEDIATE transactions."""
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.isolation_level = None  # SQLAlchemy's begin event issues BEGIN itself
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we answer
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            @sa.event.listens_for(engine, "begin")
            def _begin(conn: sa.Connection) -> None:
                # Reads (see `reading`) take no write lock, so they never wait behind a writer.
                conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=8)
        meta.create_all(engine)
    except sa.exc.ArgumentError as e:
        raise UserError(f"--db {url!r} is not a SQLAlchemy URL ({e})") from None
    except (sa.exc.OperationalError, ModuleNotFoundError) as e:
        raise UserError(f"cannot open review database {_redact(url)}: {str(e).splitlines()[0]}") from None
    return engine


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid url>"


# --- accounts ---------------------------------------------------------------------


def hash_password(password: str, salt: bytes | None = None) -> str:
    """scrypt (stdlib), stored as scrypt$n$r$p$salt$hash."""
    salt = salt or os.urandom(16)
    n, r, p = 2**14, 8, 1
    h = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${h.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, h = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), h)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(8))


def add_user(engine: sa.Engine, name: str, role: str, password: str) -> None:
    if role not in ROLES:
        raise UserError(f"role {role!r} unknown; use one of {ROLES}")
    if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise UserError(f"user name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if len(password) < 8:
        raise UserError("password too short (at least 8 characters)")
    row = {"name": name, "role": role, "pw_hash": hash_password(password), "created_at": utcnow()}
    with engine.begin() as c:
        if c.execute(sa.select(users.c.name).where(users.c.name == name)).first():
            c.execute(users.update().where(users.c.name == name).values(role=role, pw_hash=row["pw_hash"]))
        else:
            c.execute(users.insert().values(**row))


def count_users(engine: sa.Engine, role: str | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(users)
    if role:
        q = q.where(users.c.role == role)
    with reading(engine) as c:
        return int(c.execute(q).scalar_one())


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_in(engine: sa.Engine, name: str, password: str) -> tuple[str, str] | None:
    """(token, csrf) for a new session, or None when the name or password is wrong."""
    with reading(engine) as c:
        row = c.execute(sa.select(users.c.pw_hash).where(users.c.name == name)).first()
    # A wrong name costs the same scrypt as a wrong password: no user enumeration by timing.
    ok = check_password(password, row.pw_hash if row else _dummy_hash())
    if not (row and ok):
        return None
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = utcnow() + dt.timedelta(hours=SESSION_HOURS)
    with engine.begin() as c:
        c.execute(sessions.delete().where(sessions.c.expires_at < utcnow()))
        c.execute(sessions.insert().values(token_hash=_token_hash(token), user=name, csrf=csrf, expires_at=expires))
    return token, csrf


def session_user(engine: sa.Engine, token: str | None) -> dict[str, str] | None:
    """{name, role, csrf} of a live session, else None."""
    if not token or len(token) > 200:
        return None
    q = (sa.select(users.c.name, users.c.role, sessions.c.csrf)
         .join(sessions, sessions.c.user == users.c.name)
         .where(sessions.c.token_hash == _token_hash(token), sessions.c.expires_at > utcnow()))
    with reading(engine) as c:
        row = c.execute(q).first()
    return dict(row._mapping) if row else None


def sign_out(engine: sa.Engine, token: str) -> None:
    with engine.begin() as c:
        c.execute(sessions.delete().where(sessions.c.token_hash == _token_hash(token)))
