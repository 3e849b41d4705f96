// weft status page: polls /_weft/admin/v1/status with the admin's access token and redraws.
// The token comes from the URL fragment (#access_token=..., never sent to the server in
// the URL) or from signing in; it is kept in sessionStorage for this tab only.
"use strict";
(function () {
  const POLL_MS = 2000;
  const KEY = "weft-status-token";
  let updates = 0;
  let previous = null; // last status, for rates

  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get("access_token")) {
    sessionStorage.setItem(KEY, frag.get("access_token"));
    history.replaceState(null, "", location.pathname);
  }
  const $ = (id) => document.getElementById(id);
  const text = (v) => document.createTextNode(v === null || v === undefined ? "" : String(v));

  function td(v, cls) {
    const c = document.createElement("td");
    if (cls) c.className = cls;
    if (v instanceof Node) c.appendChild(v); else c.appendChild(text(v));
    return c;
  }
  function ago(ms, now) {
    if (!ms) return "never";
    const s = Math.max(0, (now - ms) / 1000);
    if (s < 60) return s.toFixed(0) + " s ago";
    if (s < 3600) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }
  function bar(value, max) {
    const b = document.createElement("span");
    b.className = "bar";
    b.style.width = Math.min(120, Math.round(120 * value / Math.max(1, max))) + "px";
    return b;
  }
  function fill(tbody, rows, empty, cols) {
    tbody.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      const c = td(empty, "empty");
      c.colSpan = cols;
      tr.appendChild(c);
      tbody.appendChild(tr);
    }
    rows.forEach((r) => tbody.appendChild(r));
  }
  function kv(tbody, obj) {
    const rows = Object.entries(obj).map(([k, v]) => {
      const tr = document.createElement("tr");
      tr.appendChild(td(k));
      tr.appendChild(td(typeof v === "object" && v !== null ? JSON.stringify(v) : v, "mono"));
      return tr;
    });
    fill(tbody, rows, "none", 2);
  }

  function render(st) {
    const now = st.now_ms;
    $("server").textContent = st.server_name;
    $("room-actors").textContent = st.room_actors;
    if (st.config.metrics_path) $("metrics-link").href = st.config.metrics_path;
    const prevRooms = new Map();
    if (previous) previous.rooms.forEach((r) => prevRooms.set(r.room_id, r));
    const dt = previous ? Math.max(0.001, (now - previous.now_ms) / 1000) : null;

    fill($("rooms").tBodies[0], st.rooms.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.room = r.room_id;
      if (r.high_water >= 0.8 * r.mailbox_capacity) tr.className = "hot";
      const p = prevRooms.get(r.room_id);
      const rate = p && dt ? ((r.events - p.events) / dt).toFixed(1) : "…";
      tr.appendChild(td(r.room_id, "mono"));
      tr.appendChild(td(r.alive ? "alive" : "stopped", r.alive ? "ok" : ""));
      tr.appendChild(td(r.waiting, "num depth"));
      tr.appendChild(td(bar(r.waiting, r.mailbox_capacity)));
      tr.appendChild(td(r.high_water + " / " + r.mailbox_capacity, "num"));
      tr.appendChild(td(rate, "num rate"));
      tr.appendChild(td(r.events, "num events"));
      tr.appendChild(td(r.handled, "num handled"));
      tr.appendChild(td(ago(r.last_activity_ms, now)));
      return tr;
    }), "no room has been active since the server started", 9);

    fill($("destinations").tBodies[0], st.destinations.map((d) => {
      const tr = document.createElement("tr");
      tr.dataset.destination = d.destination;
      tr.appendChild(td(d.destination, "mono"));
      tr.appendChild(td(d.backlog, "num backlog" + (d.backlog > 0 ? " warn" : "")));
      tr.appendChild(td(d.in_flight_age_secs > 0 ? d.in_flight_age_secs.toFixed(1) + " s" : "—", "num"));
      tr.appendChild(td(d.failures, "num failures" + (d.failures > 0 ? " bad" : "")));
      tr.appendChild(td(d.backoff_secs > 0 ? d.backoff_secs.toFixed(1) + " s" : "—", "num"));
      tr.appendChild(td(d.next_retry_ts ? new Date(d.next_retry_ts).toLocaleTimeString() : "—"));
      tr.appendChild(td(d.catching_up ? "catching up" : "—", d.catching_up ? "warn" : ""));
      tr.appendChild(td(ago(d.last_success_ts, now)));
      const err = td(d.last_error || "", "bad error");
      err.title = d.last_error || "";
      tr.appendChild(err);
      return tr;
    }), "no destination has queued work or retry state", 9);

    kv($("writer").tBodies[0], st.writer);
    const refusals = st.rate_limits.refusals || {};
    kv($("ratelimits").tBodies[0], Object.keys(refusals).length ? refusals : { "refusals": 0 });
    kv($("config").tBodies[0], st.config);
    updates += 1;
    $("updates").textContent = updates;
    $("updated").textContent = new Date(now).toLocaleTimeString();
    previous = st;
  }

  function showError(msg) {
    const e = $("error");
    e.textContent = msg;
    e.style.display = "block";
  }

  async function poll() {
    const token = sessionStorage.getItem(KEY);
    if (!token) {
      $("login").style.display = "block";
      $("main").style.display = "none";
      return;
    }
    try {
      const r = await fetch("/_weft/admin/v1/status", { headers: { Authorization: "Bearer " + token } });
      const body = await r.json();
      if (!r.ok) {
        $("main").style.display = "none";
        showError("Refused (" + r.status + " " + (body.errcode || "") + "): " + (body.error || ""));
        if (r.status === 401) sessionStorage.removeItem(KEY);
        return; // no more polling: the page is for admins
      }
      $("error").style.display = "none";
      render(body);
    } catch (e) {
      showError("status unavailable: " + e);
    }
    setTimeout(poll, POLL_MS);
  }

  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await fetch("/_matrix/client/v3/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: $("login-user").value },
        password: $("login-password").value,
        initial_device_display_name: "weft status page",
      }),
    });
    const body = await r.json();
    if (!r.ok) { showError("sign-in failed: " + (body.error || r.status)); return; }
    sessionStorage.setItem(KEY, body.access_token);
    $("login").style.display = "none";
    $("main").style.display = "";
    poll();
  });

  poll();
})();
