"""Server-rendered HTML. Every dynamic value goes through `esc` (html.escape with quotes);
the item page's texts are filled in by static/review.js with textContent, never innerHTML."""

from __future__ import annotations

import json
from html import escape
from typing import Any


def esc(v: Any) -> str:
    return escape("" if v is None else str(v), quote=True)


def _page(title: str, body: str, user: dict[str, str] | None = None, scripts: tuple[str, ...] = (),
          csrf: str | None = None) -> str:
    nav = ""
    if user:
        admin = ' <a href="/admin">admin</a>' if user["role"] == "admin" else ""
        nav = (f'<nav><a href="/">queues</a>{admin} <span class="who">{esc(user["name"])} ({esc(user["role"])})'
               f'</span><form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
               f'value="{esc(user["csrf"])}"><button>sign out</button></form></nav>')
    meta = f'<meta name="csrf" content="{esc(csrf)}">' if csrf else ""
    js = "".join(f'<script src="/static/{esc(s)}" defer></script>' for s in scripts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>{meta}'
            f'<link rel="stylesheet" href="/static/review.css">{js}</head><body>{nav}{body}</body></html>')


def login(csrf: str, nxt: str, failed: bool) -> str:
    msg = '<p class="error">wrong user or password</p>' if failed else ""
    return _page("Sign in", f"""<main class="login"><h1>acedata review</h1>{msg}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{esc(csrf)}"><input type="hidden" name="next" value="{esc(nxt)}">
<label>user <input name="user" id="user" autocomplete="username" autofocus required></label>
<label>password <input name="password" id="password" type="password" autocomplete="current-password" required>
</label><button id="signin">sign in</button></form></main>""")


def home(user: dict[str, str], queues: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr><td><a href="/review/{esc(q["name"])}">{esc(q["name"])}</a></td><td>{esc(q["spec"].get("by"))}</td>'
        f'<td>{q["done"]} / {q["copies"]}</td></tr>' for q in queues)
    body = ("<main><h1>Review queues</h1><table><tr><th>queue</th><th>built by</th><th>done / copies</th></tr>"
            f"{rows}</table>" + ("" if queues else "<p>No queues yet: an admin builds them with "
                                 "<code>acedata review RUN queue NAME --by random</code>.</p>") + "</main>")
    return _page("Review queues", body, user)


def review(user: dict[str, str], queue: str, reasons: dict[str, str]) -> str:
    reason_items = "".join(f'<li data-reason="{esc(k)}"><kbd>{i}</kbd> {esc(k)} — {esc(v)}</li>'
                           for i, (k, v) in enumerate(reasons.items(), 1))
    body = f"""<main id="review" data-queue="{esc(queue)}" data-reasons="{esc(json.dumps(list(reasons)))}">
<header><h1>queue {esc(queue)}</h1><span id="status" role="status"></span><span id="count"></span></header>
<section id="item" hidden>
  <div class="meta"><span id="task"></span> / <span id="subtask"></span> · <code id="pair"></code></div>
  <div id="images" class="images"></div>
  <div id="analysis" class="analysis" hidden><h3>MLLM analysis</h3><div id="differences"></div>
    <div id="commonalities"></div></div>
  <ol id="candidates" class="candidates"></ol>
  <div id="editor" hidden><label for="edit-text">corrected instruction (allowed:
    <span id="allowed"></span>)</label><textarea id="edit-text" rows="3"></textarea>
    <div id="edit-error" class="error" role="alert"></div>
    <div class="hint"><kbd>Ctrl</kbd>+<kbd>Enter</kbd> save · <kbd>Esc</kbd> cancel</div></div>
  <div id="reasons" hidden><h3>Reject: pick a reason</h3><ol>{reason_items}</ol>
    <div class="hint"><kbd>Esc</kbd> cancel</div></div>
  <footer class="keys"><kbd>1</kbd>–<kbd>9</kbd> accept candidate · <kbd>e</kbd> edit · <kbd>r</kbd> reject ·
    <kbd>s</kbd> skip</footer>
</section>
<section id="empty" hidden><p>Nothing left in this queue for you. Thank you.</p></section>
</main>"""
    return _page(f"Review {queue}", body, user, scripts=("review.js",), csrf=user["csrf"])


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def admin(user: dict[str, str], s: dict[str, Any]) -> str:
    q = _table(["queue", "items", "copies", "done", "claimed", "open", "progress"],
               [[x["queue"], x["items"], x["copies"], x["done"], x["claimed"], x["open"],
                 f"{100 * x['progress']:.1f}%"] for x in s["queues"]])
    a = _table(["annotator", "decisions", "accept", "edit", "reject", "skip", "per hour", "last hour", "last"],
               [[u["annotator"], u["decisions"], u["accept"], u["edit"], u["reject"], u["skip"], u["per_hour"],
                 u["last_hour"], u["last"]] for u in s["annotators"]])
    r = _table(["reason", "count"], [[k, v] for k, v in s["reject_reasons"].items()])
    g = _table(["measure", "value"], [[k, v] for k, v in s["agreement"].items()])
    body = f"""<main class="admin"><h1>Progress</h1>
<p>{s['decisions']} decisions, {s['decisions_last_hour']} in the last hour.
Export: <a href="/admin/decisions.csv">CSV</a> · <a href="/admin/decisions.json">JSON</a> ·
<form method="post" action="/api/admin/export-run" class="inline"><input type="hidden" name="csrf"
value="{esc(user["csrf"])}"><button id="export-run">append to the run's reviews table</button></form></p>
<h2>Queues</h2>{q}<h2>Annotators</h2>{a}<h2>Reject reasons</h2>{r}
<h2>Agreement on overlap items</h2>{g}</main>"""
    return _page("Review admin", body, user)


def error(msg: str) -> str:
    return _page("Error", f'<main><p class="error">{esc(msg)}</p><p><a href="/">back</a></p></main>')
