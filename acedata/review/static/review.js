// The item page: one item at a time, every action on the keyboard, the next item claimed
// and its images fetched while the current one is on screen. All text goes in through
// textContent (never innerHTML), so instructions are shown exactly as written.
"use strict";
(() => {
  const root = document.getElementById("review");
  const queue = root.dataset.queue;
  const reasons = JSON.parse(root.dataset.reasons);
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const size = window.innerWidth > 1800 ? 1024 : 768;
  const $ = (id) => document.getElementById(id);
  let cur = null, nextP = null, mode = "idle", busy = false, reviewed = 0, renewer = null;

  async function post(path, body) {
    const r = await fetch(path, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body)});
    let j = {};
    try { j = await r.json(); } catch (e) { /* empty body */ }
    return {status: r.status, body: j};
  }
  const imgUrl = (id) => "/img/" + encodeURIComponent(id) + "?s=" + size;
  const idsOf = (it) => [...it.inputs, it.mask, it.target].filter(Boolean);

  async function claimOne() {
    const r = await post("/api/queues/" + encodeURIComponent(queue) + "/claim",
                         {holding: cur ? [cur.pair_id] : []});
    if (r.status !== 200) { status(r.body.error || ("claim failed: " + r.status)); return null; }
    if (r.body.done) return null;
    keepLeases(r.body.lease_s);
    for (const id of idsOf(r.body.item)) { const im = new Image(); im.src = imgUrl(id); }  // preload
    return r.body.item;
  }

  // While the page is open its items stay claimed: renew the leases well before they run out.
  function keepLeases(leaseS) {
    if (renewer || !leaseS) return;
    renewer = setInterval(async () => {
      const held = [cur && cur.pair_id, ...(nextP ? [await nextP] : []).map((i) => i && i.pair_id)];
      post("/api/queues/" + encodeURIComponent(queue) + "/renew", {pair_ids: held.filter(Boolean)});
    }, Math.max(5, Math.min(60, leaseS / 3)) * 1000);
  }

  async function advance() {
    cur = nextP ? await nextP : await claimOne();
    nextP = null;
    render();
    if (cur) nextP = claimOne();
  }

  function status(msg) { $("status").textContent = msg || ""; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function figure(id, label) {
    const f = el("figure");
    const img = el("img");
    img.src = imgUrl(id);
    img.alt = label;
    f.append(img, el("figcaption", null, label));
    return f;
  }

  function render() {
    setMode("idle");
    $("item").hidden = !cur;
    $("empty").hidden = !!cur;
    $("count").textContent = reviewed + " reviewed";
    if (!cur) return;
    $("item").dataset.pair = cur.pair_id;
    $("task").textContent = cur.task;
    $("subtask").textContent = cur.subtask;
    $("pair").textContent = cur.pair_id;
    const imgs = $("images");
    imgs.replaceChildren();
    cur.inputs.forEach((id, k) => imgs.append(figure(id, "input " + (cur.indicators[k] || k + 1))));
    if (cur.mask) imgs.append(figure(cur.mask, "mask"));
    imgs.append(figure(cur.target, "target"));
    const list = $("candidates");
    list.replaceChildren();
    for (const c of cur.candidates) {
      const li = el("li", "candidate");
      li.dataset.n = c.n;
      li.append(el("kbd", null, String(c.n)), el("span", "method", c.method), el("span", "text", c.instruction));
      list.append(li);
    }
    const a = cur.analysis;
    $("analysis").hidden = !a;
    if (a) {
      $("differences").replaceChildren(el("b", null, "differences: "), el("span", null, (a.differences || []).join("; ")));
      $("commonalities").replaceChildren(el("b", null, "in common: "), el("span", null, (a.commonalities || []).join("; ")));
    }
    $("allowed").textContent = cur.indicators.length ? cur.indicators.join(", ") : "no indicators";
  }

  // The server's rule (assign.check_indicators), checked as the annotator types.
  function check(text, allowed) {
    if (!text.trim()) return "the corrected instruction is empty";
    const found = text.match(/\{[^{}]*\}/g) || [];
    const bad = [...new Set(found.filter((f) => !allowed.includes(f)))].sort();
    if (bad.length) return "unknown image indicator " + bad.join(", ") + "; this item allows " +
      (allowed.length ? allowed.join(", ") : "none (this item has no input image)");
    if (allowed.length && !found.length) return "name the input image with " + allowed.slice(0, 2).join(" or ");
    if ((text.match(/\{/g) || []).length !== (text.match(/\}/g) || []).length) return "unbalanced braces";
    return null;
  }

  function setMode(m) {
    mode = m;
    $("editor").hidden = m !== "edit";
    $("reasons").hidden = m !== "reject";
    root.dataset.mode = m;
  }

  function liveCheck() {
    const why = check($("edit-text").value, cur.indicators);
    $("edit-error").textContent = why || "";
    $("edit-text").setAttribute("aria-invalid", why ? "true" : "false");
    return why;
  }

  async function send(body) {
    if (busy || !cur) return;
    busy = true;
    status("saving…");
    try {
      const r = await post("/api/decisions", {queue, pair_id: cur.pair_id, ...body});
      if (r.status === 200) {
        reviewed += 1;
        status("saved " + body.decision);
        await advance();
      } else if (r.status === 422) {
        status(r.body.error);
        if (mode === "edit") $("edit-error").textContent = r.body.error;
      } else if (r.status === 409) {
        status(r.body.error);
        await advance();
      } else {
        status(r.body.error || ("error " + r.status));
      }
    } finally {
      busy = false;
    }
  }

  document.addEventListener("keydown", (ev) => {
    if (!cur || busy) return;
    if (mode === "edit") {
      if (ev.key === "Escape") { setMode("idle"); ev.preventDefault(); }
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        if (!liveCheck()) send({decision: "edit", instruction: $("edit-text").value});
      }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (mode === "reject") {
      const k = parseInt(ev.key, 10);
      if (ev.key === "Escape") setMode("idle");
      else if (k >= 1 && k <= reasons.length) send({decision: "reject", reason: reasons[k - 1]});
      ev.preventDefault();
      return;
    }
    const n = parseInt(ev.key, 10);
    if (n >= 1 && n <= 9) {
      if (cur.candidates.some((c) => c.n === n)) send({decision: "accept", candidate: n});
    } else if (ev.key === "e") {
      setMode("edit");
      const t = $("edit-text");
      t.value = cur.candidates.length ? cur.candidates[0].instruction : "";
      liveCheck();
      t.focus();
    } else if (ev.key === "r") setMode("reject");
    else if (ev.key === "s") send({decision: "skip"});
    else return;
    ev.preventDefault();
  });
  document.addEventListener("input", (ev) => { if (ev.target.id === "edit-text") liveCheck(); });

  advance();
})();
