// vmha Failover Monitor: plain JavaScript, no framework, nothing fetched from another site.
// Everything shown comes from this node's JSON API; text is always set with textContent.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";
  let hours = 24; // the timeline's window (the #timeline-hours choice)
  // log records that change the timeline: it is fetched again shortly after one
  const TIMELINE_EVENTS = new Set(["starting", "activating", "failover", "failback", "startup",
    "deactivated", "reterm", "stopped", "peer_up", "peer_command"]);
  const ACTIVE = new Set(["active", "activating"]);
  const STALE_MS = 5000; // the stream sends a status every second: silence this long = reconnect
  const MAX_EVENTS = 60;

  let session = null;
  let isAdmin = false;
  let status = null;
  let stream = null;
  let lastData = 0;
  let busy = false;
  let pending = null;
  let timelineTimer = null;
  let lastTimeline = null;
  let recovering = false;
  // the peer's states as this page saw them in the live statuses: [{t, state}] (the peer's
  // row of the timeline from this node's log misses changes this node did not log)
  const observed = [];
  const SEG_OF = { starting: "inactive", inactive: "inactive", draining: "inactive", activating: "activating",
    active: "active", stopped: "stopped" };

  // ------------------------------------------------------------------ helpers

  function show(v) {
    return v === null || v === undefined || v === "" ? "?" : String(v);
  }

  function setText(id, v) {
    const el = $(id);
    if (el) el.textContent = show(v);
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function fmtTime(t, withDate) {
    if (t === null || t === undefined) return "?";
    const d = new Date(t * 1000);
    const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms}` : hms;
  }

  function fmtDuration(s) {
    if (s === null || s === undefined) return "—";
    return s < 10 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(1)} s`;
  }

  function setState(id, state) {
    const el = $(id);
    el.textContent = show(state);
    el.className = "state st-" + (state || "unknown");
  }

  function message(textMsg, isError) {
    const el = $("message");
    el.textContent = textMsg;
    el.className = isError ? "message error" : "message";
    el.hidden = !textMsg;
  }

  function setLive(on, why) {
    const el = $("live");
    el.textContent = on ? "live" : (why || "reconnecting");
    el.className = on ? "live-on" : "live-off";
  }

  async function api(method, path, body) {
    // referrerPolicy same-origin: the browser then sends this page's Origin with a POST (with
    // no-referrer it sends "Origin: null", which the node refuses as a cross-site request)
    const opts = { method: method, headers: { Accept: "application/json" }, credentials: "same-origin",
      redirect: method === "GET" ? "follow" : "manual", referrerPolicy: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    if (method !== "GET" && session) opts.headers["X-CSRF-Token"] = session.csrf_token;
    const r = await fetch(path, opts);
    if (r.type === "opaqueredirect") {
      throw new Error("this node passes the request on to the active node: use the active node's page");
    }
    let data = null;
    try {
      data = await r.json();
    } catch (e) {
      data = null;
    }
    if (r.status === 401) {
      window.location.href = "/login";
      throw new Error("not logged in (or the session ended)");
    }
    if (!r.ok || !data || data.ok === false) {
      const err = new Error(data && data.error ? data.error.message : `HTTP ${r.status}`);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  function dlRows(id, rows) {
    const dl = $(id);
    dl.replaceChildren();
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = show(v);
      dl.append(dt, dd);
    }
  }

  // ------------------------------------------------------------------ status

  function healthText(h, drivers) {
    let out = show(h);
    if (drivers && drivers.length) {
      out += " (" + drivers.map((d) => `${d.name} ${d.score}` + (d.detail ? `: ${d.detail}` : "")).join("; ") + ")";
    }
    return out;
  }

  function renderStatus(body) {
    const st = body.status || body;
    status = st;
    const n = st.node;
    const p = st.peer;
    setText("node-name", n.name);
    setText("node-role", n.role);
    setState("node-state", n.state);
    setText("node-term", n.term);
    setText("node-mode", n.mode);
    let service = show(n.service);
    if (n.service_failures) service += ` (${n.service_failures} failures, next start in ${show(n.service_retry_in_s)} s)`;
    setText("node-service", service);
    setText("node-health", healthText(n.health, n.drivers));
    setText("node-calls", st.calls_in_progress);
    const flags = [];
    if (n.hold) flags.push("hold");
    if (n.shutting_down) flags.push("shutting down");
    if (n.licensed === false) flags.push("UNLICENSED");
    setText("node-cause", show(n.cause) + (flags.length ? `  [${flags.join(", ")}]` : ""));

    const peerRole = n.role === "primary" ? "secondary" : "primary";
    setText("peer-name", p.name);
    setText("peer-role", peerRole);
    setState("peer-state", p.state || "unknown");
    setText("peer-term", p.term);
    setText("peer-mode", p.mode);
    setText("peer-service", p.service);
    setText("peer-health", p.health);
    setText("peer-calls", p.calls);
    const link = p.link || {};
    const hb = p.last_heartbeat_age_s;
    setText("peer-link", (p.reachable ? "reachable" : "NOT reachable") +
      `; heartbeat ${hb === null || hb === undefined ? "never" : hb.toFixed(2) + " s ago"}` +
      `; link ${link.out_connected ? "up" : "down"} out, ${show(link.in_connections || 0)} in`);

    const seg = (p.reachable && SEG_OF[p.state]) || "unknown";
    if (!observed.length || observed[observed.length - 1].state !== seg) {
      observed.push({ t: Date.now() / 1000, state: seg });
      if (observed.length > 500) observed.splice(0, observed.length - 500);
      if (lastTimeline) scheduleTimeline(300);
    }
    renderBanner(body, n);
    renderButtons();
    renderPorts(st.ports || []);
    renderReplication(st.replication);
    renderCounters(st.counters || {});
  }

  function renderBanner(body, n) {
    const banner = $("active-banner");
    const a = $("active-link");
    if (ACTIVE.has(n.state)) {
      banner.hidden = true;
      return;
    }
    banner.hidden = false;
    if (body.active_node) {
      a.textContent = body.active_node;
      if (body.active_url) {
        a.href = body.active_url.replace(/\/+$/, "") + "/";
      } else {
        a.removeAttribute("href");
      }
    } else {
      a.textContent = "none known (neither node reports itself active)";
      a.removeAttribute("href");
    }
  }

  function renderButtons() {
    const fo = $("btn-failover");
    const fb = $("btn-failback");
    const mode = $("btn-mode");
    const st = status;
    const m = st ? st.node.mode : null;
    mode.textContent = m ? `Mode: ${m} (switch to ${m === "manual" ? "automatic" : "manual"})` : "Mode";
    if (!isAdmin || busy || !st) {
      fo.disabled = fb.disabled = mode.disabled = true;
      return;
    }
    const n = st.node;
    const primaryState = n.role === "primary" ? n.state : st.peer.state;
    const secondaryState = n.role === "secondary" ? n.state : st.peer.state;
    fo.disabled = ACTIVE.has(secondaryState);
    fb.disabled = ACTIVE.has(primaryState);
    fo.title = fo.disabled ? "the secondary is already active" : "make the secondary the active node";
    fb.title = fb.disabled ? "the primary is already active" : "make the primary the active node";
    mode.disabled = false;
  }

  function renderPorts(ports) {
    const byKind = new Map();
    for (const p of ports) {
      const k = p.kind || "?";
      if (!byKind.has(k)) byKind.set(k, []);
      byKind.get(k).push(p);
    }
    const tbody = $("ports").tBodies[0];
    tbody.replaceChildren();
    const details = [];
    for (const [kind, list] of byKind) {
      const counts = new Map();
      for (const p of list) counts.set(p.state, (counts.get(p.state) || 0) + 1);
      const tr = document.createElement("tr");
      for (const v of [kind, String(list.length), [...counts].map(([s, c]) => `${s} ${c}`).join(", ")]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.append(td);
      }
      tbody.append(tr);
      for (const p of list) if (p.detail) details.push(`${p.name}: ${p.detail}`);
    }
    if (!ports.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 3;
      td.textContent = "no ports reported (the messaging service is not running?)";
      tr.append(td);
      tbody.append(tr);
    }
    $("port-detail").textContent = details.join("; ");
  }

  function renderReplication(r) {
    if (!r || !r.db) {
      dlRows("replication", [["database", "not reported"]]);
      return;
    }
    const d = r.db;
    const rows = [
      ["enabled", r.enabled ? "yes" : "no"],
      ["log / peer acked", `${show(d.head_seq)} / ${show(d.peer_acked_seq)}`],
      ["lag", (d.lag_s === null || d.lag_s === undefined) ? `${show(d.lag_changes)} changes`
        : `${Number(d.lag_s).toFixed(1)} s (${show(d.lag_changes)} changes)`],
      ["behind the peer", d.behind_changes],
    ];
    if (d.diverged) rows.push(["DIVERGED", d.checksum]);
    if (d.paused) rows.push(["PAUSED", d.paused]);
    if (d.conflicts) rows.push(["conflicts", d.conflicts]);
    if (r.files) rows.push(["files pending", r.files.pending]);
    if (r.healthy === false) rows.push(["UNHEALTHY", r.unhealthy_reason]);
    dlRows("replication", rows);
  }

  function renderCounters(groups) {
    const rows = [];
    for (const [group, counters] of Object.entries(groups)) {
      // the lamps (MWI) still to be set come first: the same counters as vmha_lamps_pending
      // (messaging.lamps_waiting_for_a_sink, smdi.lamps_held_waiting)
      const lamps = Object.entries(counters).filter(([k]) => k === "lamps_waiting_for_a_sink"
        || k === "lamps_held_waiting");
      for (const [k, v] of lamps) rows.push([`lamps pending (${group} ${k})`, v]);
      rows.push([group, Object.entries(counters).map(([k, v]) => `${k} ${v}`).join(", ")]);
    }
    dlRows("counters", rows.length ? rows : [["counters", "none reported"]]);
  }

  // ------------------------------------------------------------------ events

  function addEvent(rec) {
    const ol = $("events");
    const li = document.createElement("li");
    li.className = "lvl-" + (rec.level || "info");
    li.textContent = `${fmtTime(rec.ts)} ${rec.node || "?"} ${(rec.level || "?").toUpperCase()} ${rec.event}: ${rec.message || ""}`;
    ol.prepend(li);
    while (ol.children.length > MAX_EVENTS) ol.lastElementChild.remove();
  }

  function connect() {
    if (stream) stream.close();
    setLive(false, "connecting");
    lastData = Date.now();
    stream = new EventSource("/api/v1/events/stream");
    stream.onopen = () => {
      lastData = Date.now();
      setLive(true);
    };
    stream.addEventListener("status", (e) => {
      lastData = Date.now();
      setLive(true);
      try {
        renderStatus(JSON.parse(e.data));
      } catch (err) {
        message(`a status from the stream could not be shown: ${err.message}`, true);
      }
    });
    stream.addEventListener("log", (e) => {
      lastData = Date.now();
      let rec;
      try {
        rec = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      addEvent(rec);
      if (TIMELINE_EVENTS.has(rec.event)) scheduleTimeline(400);
    });
    stream.onerror = () => {
      setLive(false, "reconnecting");
      if (stream.readyState === EventSource.CLOSED) setTimeout(recover, 2000);
    };
  }

  async function recover() {
    if (recovering) return;
    recovering = true;
    if (stream) stream.close();
    try {
      await api("GET", "/api/v1/session"); // a 401 goes to the login page
      connect();
      scheduleTimeline(0);
    } catch (e) {
      setLive(false, "offline: " + e.message);
      setTimeout(recover, 3000);
    } finally {
      recovering = false;
    }
  }

  function watchdog() {
    if (stream && !recovering && Date.now() - lastData > STALE_MS) {
      setLive(false, "no data: reconnecting");
      recover();
    }
  }

  // ------------------------------------------------------------------ timeline

  function scheduleTimeline(ms) {
    if (timelineTimer) clearTimeout(timelineTimer);
    timelineTimer = setTimeout(loadTimeline, ms);
  }

  async function loadTimeline() {
    timelineTimer = null;
    try {
      const tl = await api("GET", `/api/v1/timeline?hours=${hours}`);
      lastTimeline = tl;
      drawTimeline(tl);
      renderFailovers(tl);
    } catch (e) {
      $("timeline-note").textContent = `timeline not available: ${e.message}`;
    }
    scheduleTimeline(60000);
  }

  function svg(tag, attrs, parent, title) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (title) {
      const t = document.createElementNS(SVGNS, "title");
      t.textContent = title;
      el.append(t);
    }
    parent.append(el);
    return el;
  }

  // the peer's "seen" row: from the first live status on, what the statuses said
  function withObserved(row, tl) {
    if (row.source !== "seen" || !observed.length || observed[0].t >= tl.end) return row.segments;
    const from = Math.max(observed[0].t, tl.start);
    const segs = [];
    for (const s of row.segments) {
      if (s.start >= from) break;
      segs.push({ start: s.start, end: Math.min(s.end, from), state: s.state });
    }
    observed.forEach((o, i) => {
      const start = Math.max(o.t, tl.start);
      const end = Math.min(i + 1 < observed.length ? observed[i + 1].t : tl.end, tl.end);
      if (end > start) segs.push({ start: start, end: end, state: o.state, live: true });
    });
    return segs;
  }

  function drawTimeline(tl) {
    const root = $("timeline");
    root.replaceChildren();
    const W = 1000, left = 110, right = 12, top = 6, rowH = 26, gap = 12, axis = 22;
    const rows = tl.nodes;
    const H = top + rows.length * (rowH + gap) + axis;
    root.setAttribute("viewBox", `0 0 ${W} ${H}`);
    root.setAttribute("data-hours", String(tl.hours));
    const span = tl.end - tl.start;
    const x = (t) => left + ((t - tl.start) / span) * (W - left - right);
    const yOf = new Map();
    rows.forEach((row, i) => {
      const y = top + i * (rowH + gap);
      yOf.set(row.name, y);
      const label = row.name + (row.source === "seen" ? " (as seen)" : "");
      svg("text", { x: 4, y: y + rowH / 2 + 4, class: "row-label" }, root).textContent = label;
      for (const s of withObserved(row, tl)) {
        const w = Math.max(0.6, x(s.end) - x(s.start));
        svg("rect", { x: x(s.start), y: y, width: w, height: rowH, class: "seg seg-" + s.state }, root,
          `${row.name}: ${s.state} ${fmtTime(s.start, true)} – ${fmtTime(s.end, true)}` +
          (s.live ? " (seen live on this page)" : ""));
      }
    });
    // ticks on whole hours (local time; every 10 minutes for a short window, at midnight for
    // a week), labelled every few of them
    const axisY = top + rows.length * (rowH + gap);
    const step = span <= 2 * 3600 ? 600 : 3600;
    const every = span <= 12 * 3600 ? 1 : 3; // label every n-th hour
    const d = new Date(tl.start * 1000);
    d.setMinutes(span <= 2 * 3600 ? Math.floor(d.getMinutes() / 10) * 10 : 0, 0, 0);
    for (let tick = d.getTime() / 1000 + step; tick < tl.end; tick += step) {
      const t = new Date(tick * 1000);
      const h = t.getHours();
      const week = span > 48 * 3600;
      if (week && h !== 0) continue;
      svg("line", { x1: x(tick), x2: x(tick), y1: top, y2: axisY, class: "tick" }, root);
      let label = null;
      if (week) label = `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}`;
      else if (step === 600) label = `${pad(h)}:${pad(t.getMinutes())}`;
      else if (h % every === 0) label = `${pad(h)}:00`;
      if (label) svg("text", { x: x(tick), y: axisY + 15, "text-anchor": "middle" }, root).textContent = label;
    }
    svg("line", { x1: x(tl.end), x2: x(tl.end), y1: top, y2: axisY, class: "now" }, root, "now");
    for (const m of tl.markers) {
      const y = yOf.has(m.node) ? yOf.get(m.node) : top;
      const mx = x(m.time);
      const took = m.duration_s === null ? "" : ` after ${fmtDuration(m.duration_s)}`;
      const title = `${m.kind}: ${m.node} active at ${fmtTime(m.time, true)}${took}` +
        (m.term !== null && m.term !== undefined ? `, term ${m.term}` : "") +
        `; why: ${(m.label || "other").replace(/_/g, " ")}; cause: ${m.cause}` +
        (m.peer_reason ? ` (handed over: ${m.peer_reason})` : "");
      svg("polygon", { points: `${mx - 6},${y - 4} ${mx + 6},${y - 4} ${mx},${y + 9}`,
        class: `marker mk-${m.kind}` + (m.seen ? " seen" : "") }, root, title);
    }
    $("timeline-range").textContent = `until ${fmtTime(tl.end, true)}`;
    const notes = [];
    if (tl.truncated) notes.push("the event log is long: only its tail was read");
    if (tl.problem_count) notes.push(`${tl.problem_count} unusable log records left out (first: ${tl.problems[0].error})`);
    if (rows.some((r) => r.source === "seen")) notes.push("the peer's row is what this node saw of it (its own page has its own log)");
    $("timeline-note").textContent = notes.join("; ");
  }

  function renderFailovers(tl) {
    const why = (x) => (x.label || "other").replace(/_/g, " ");
    const cause = (x) => x.cause + (x.peer_reason ? ` (handed over: ${x.peer_reason})` : "");
    const rows = tl.failovers.map((f) => ({ time: f.active_at || f.time, node: f.node, kind: f.kind || "—",
      term: f.term, why: why(f), cause: cause(f), took: fmtDuration(f.duration_s),
      outcome: f.outcome + (f.ended_at ? `; ended ${fmtTime(f.ended_at)}: ${f.ended_cause}` : "") }));
    for (const m of tl.markers) {
      if (m.seen) rows.push({ time: m.time, node: m.node, kind: m.kind, term: null, why: why(m), cause: m.cause,
        took: "—", outcome: "seen from this node" });
    }
    rows.sort((a, b) => b.time - a.time);
    const tbody = $("failovers").tBodies[0];
    tbody.replaceChildren();
    for (const r of rows.slice(0, 10)) {
      const tr = document.createElement("tr");
      tr.className = "fo-" + r.kind;
      for (const v of [fmtTime(r.time, true), r.node, r.kind, show(r.term), r.why, r.cause, r.took, r.outcome]) {
        const td = document.createElement("td");
        td.textContent = show(v);
        tr.append(td);
      }
      tbody.append(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 8;
      td.textContent = "no activation in this node's event log";
      tr.append(td);
      tbody.append(tr);
    }
  }

  // ------------------------------------------------------------------ actions

  function ask(textMsg, action) {
    const dlg = $("confirm");
    $("confirm-text").textContent = textMsg;
    pending = action;
    dlg.returnValue = "";
    dlg.showModal();
  }

  async function act(path, body, what) {
    busy = true;
    renderButtons();
    message(`${what}: sent ...`, false);
    try {
      const r = await api("POST", path, body);
      message(r.message || `${what}: done`, false);
    } catch (e) {
      message(`${what} refused: ${e.message}`, true);
    } finally {
      busy = false;
      renderButtons();
    }
  }

  function names() {
    const n = status.node;
    const p = status.peer;
    return n.role === "primary" ? { primary: n.name, secondary: p.name } : { primary: p.name, secondary: n.name };
  }

  function setupTimelineChoice() {
    const sel = $("timeline-hours");
    sel.addEventListener("change", () => {
      const h = parseInt(sel.value, 10);
      if (h >= 1 && h <= 168) {
        hours = h;
        scheduleTimeline(0);
      }
    });
  }

  function setupButtons() {
    $("confirm").addEventListener("close", () => {
      const action = pending;
      pending = null;
      if ($("confirm").returnValue === "yes" && action) action();
    });
    $("btn-failover").addEventListener("click", () => {
      const nm = names();
      ask(`Fail over to the secondary ${nm.secondary}? ${nm.primary} stops taking new calls (calls in ` +
        `progress finish) and ${nm.secondary} becomes the active node.`,
      () => act("/api/v1/failover", { force: false }, "failover"));
    });
    $("btn-failback").addEventListener("click", () => {
      const nm = names();
      ask(`Fail back to the primary ${nm.primary}? ${nm.secondary} stops taking new calls (calls in ` +
        `progress finish) and ${nm.primary} becomes the active node.`,
      () => act("/api/v1/failback", { force: false }, "failback"));
    });
    $("btn-mode").addEventListener("click", () => {
      const to = status.node.mode === "manual" ? "automatic" : "manual";
      ask(`Switch ${status.node.name} to ${to} mode?` + (to === "manual"
        ? " In manual mode the node does not fail back on its own." : ""),
      () => act("/api/v1/mode", { mode: to }, `mode ${to}`));
    });
  }

  // ------------------------------------------------------------------ start

  async function init() {
    setupButtons();
    setupTimelineChoice();
    try {
      session = await api("GET", "/api/v1/session");
    } catch (e) {
      message(`cannot read the session: ${e.message}`, true);
      return;
    }
    isAdmin = session.role === "admin";
    setText("operator", `${session.operator} (${session.role})`);
    $("logout-csrf").value = session.csrf_token;
    document.title = `vmha Failover Monitor: ${session.node}`;
    if (!isAdmin) {
      $("controls-note").textContent =
        `Read-only: ${session.operator} has the read role; failover, failback and mode need an admin operator.`;
    }
    renderButtons();
    try {
      renderStatus(await api("GET", "/api/v1/status"));
    } catch (e) {
      message(`cannot read the status: ${e.message}`, true);
    }
    connect();
    loadTimeline();
    setInterval(watchdog, 1000);
    // the timeline's right edge is "now": redraw it as time passes
    setInterval(() => {
      if (lastTimeline) {
        const moved = Date.now() / 1000 - lastTimeline.end;
        if (moved > 30) scheduleTimeline(0);
      }
    }, 10000);
  }

  init();
})();
