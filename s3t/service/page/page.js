// The operator's page of `s3t serve`: reads the JSON API every few seconds and renders it.
// Only counts of deleted samples are ever shown: a certificate's sample ids and group hashes
// are counted here and never written into the page. The token (for the deletion log) lives
// in this tab's sessionStorage and travels only in an Authorization header.
"use strict";

(() => {
  const REFRESH_MS = 3000;
  const TOKEN_KEY = "s3t-token";
  const PAGE = 50;               // deletion certificates per page of the log
  const SVG = "http://www.w3.org/2000/svg";

  let deletionOffset = null;     // null: the newest page
  let deletionTotal = 0;
  let timer = null;
  let running = false;
  let again = false;             // a refresh was asked for while one ran: run it after
  let refreshes = 0;

  const $ = (id) => document.getElementById(id);

  // An element with text children only (never HTML: nothing from the API is parsed as markup).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function getJson(path, token) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(path, { headers, cache: "no-store", credentials: "same-origin" });
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    return { status: response.status, ok: response.ok, body };
  }

  const pct = (x) => (typeof x === "number" ? (100 * x).toFixed(1) + "%" : "–");
  // Local time as YYYY-MM-DD HH:MM:SS: short, sortable, unambiguous.
  function localTime(date) {
    const two = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ` +
      `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
  }
  const unixTime = (s) => (typeof s === "number" ? localTime(new Date(s * 1000)) : "–");
  function isoTime(text) {
    const date = new Date(text);
    return Number.isNaN(date.getTime()) ? String(text) : localTime(date);
  }
  const count = (list) => (Array.isArray(list) ? list.length : 0);

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // --- status: overview, shards, retrain policy and job ------------------------------------
  function renderStatus(status) {
    const runDir = String(status.run_dir || "");
    $("run-name").textContent = runDir.split("/").filter(Boolean).pop() || "";
    $("run-summary").textContent =
      `${status.method}: ${status.shards} shards × ${status.slices} slices, ` +
      `${status.strategy} orderings, budget ${status.budget}; ${status.samples} training samples`;
    $("live-shards").textContent = `${status.live_shards} of ${status.shards}`;
    $("capacity").textContent = pct(status.capacity);
    $("val-accuracy").textContent = !("val_accuracy" in status) ? "not available"
      : status.val_accuracy === null ? "not measured yet" : pct(status.val_accuracy);
    $("deleted").textContent = status.deleted;
    $("deletion-requests").textContent = status.deletion_requests;
    $("live-stages").textContent = "stages_total" in status
      ? `${status.live_stages} of ${status.stages_total}` : status.live_stages;
    $("erased-stages").textContent = status.erased_stages;
    $("training").textContent = status.training;

    const routes = status.routes || {};
    const shards = Object.keys(routes).map(Number).sort((a, b) => a - b);
    replaceRows($("shards").tBodies[0], shards.map((shard) => {
      const route = routes[String(shard)];
      if (!route) {
        return el("tr", { "data-shard": shard, class: "dead" },
          el("td", {}, shard), el("td", { class: "stage" }, "no live route: needs a retrain"),
          el("td", { class: "depth" }, 0), el("td", { class: "prefix" }, "–"));
      }
      return el("tr", { "data-shard": shard },
        el("td", {}, shard), el("td", { class: "stage" }, el("code", {}, route.stage)),
        el("td", { class: "depth" }, route.depth),
        el("td", { class: "prefix" }, (route.prefix || []).join(" → ")));
    }));

    const retrain = status.retrain;
    if (!retrain) {
      $("retrain-policy").textContent = "Retraining over HTTP: not available on this server " +
        "(run `s3t retrain RUN`; this server picks up the new stages at its next model call).";
      $("retrain-job").replaceChildren();
      return;
    }
    $("retrain-policy").textContent =
      `policy ${retrain.policy}, delay ${retrain.delay_s} s after the last deletion`;
    $("retrain-job").replaceChildren(retrain.job ? renderJob(retrain.job)
      : el("p", { class: "muted" }, "no retrain job on this server yet"));
  }

  function renderJob(job) {
    const done = job.stages_done || 0;
    const total = job.stages_total;
    const progress = typeof total === "number" && total > 0
      ? el("progress", { max: total, value: done }) : null;
    const current = job.current_stage
      ? `${job.current_stage.key} (shard ${job.current_stage.shard})` : "–";
    const rows = [
      ["job", el("code", {}, job.id)],
      ["state", el("span", { class: "state state-" + job.state }, job.state)],
      ["trigger", job.trigger],
      ["stages", el("span", {}, `${done} of ${total === null || total === undefined ? "?" : total}`,
        progress ? " " : null, progress)],
      ["training now", current],
      ["discarded by deletions", job.stages_discarded],
      ["created", unixTime(job.created)],
      ["started", unixTime(job.started)],
      ["finished", unixTime(job.finished)],
      ["last route switch", unixTime(job.last_route_switch)],
    ];
    if (job.error) rows.push(["error", el("span", { class: "error" }, job.error)]);
    return el("dl", { class: "job", id: "job-" + job.id },
      ...rows.map(([key, value]) => el("div", {}, el("dt", {}, key), el("dd", {}, value))));
  }

  function renderJobs(reply) {
    const table = $("jobs");
    if (!reply.ok || !reply.body || !Array.isArray(reply.body.jobs) || !reply.body.jobs.length) {
      table.hidden = true;
      return;
    }
    table.hidden = false;
    replaceRows(table.tBodies[0], reply.body.jobs.slice(0, 10).map((job) => el("tr", {},
      el("td", {}, el("code", {}, job.id)), el("td", {}, job.state), el("td", {}, job.trigger),
      el("td", {}, `${job.stages_done} of ${job.stages_total ?? "?"}`),
      el("td", {}, unixTime(job.created)), el("td", {}, unixTime(job.finished)))));
  }

  // --- history: two small SVG plots --------------------------------------------------------
  // Ticks at the ends and the middle; on an integer axis (counts) only whole numbers.
  function xTicks(lo, hi, integer) {
    if (!integer) return [lo, (lo + hi) / 2, hi];
    const first = Math.ceil(lo), step = Math.max(1, Math.ceil((hi - lo) / 6));
    const ticks = [];
    for (let x = first; x <= hi; x += step) ticks.push(x);
    return ticks;
  }

  // series: [{points: [[x, y], ...], cls}]; y is a fraction in [0, 1].
  function plot(container, series, xFormat, xLabel, integer) {
    const W = 480, H = 220, L = 44, R = 12, T = 10, B = 34;
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart" });
    if (!xs.length) {
      svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
        "no points yet"));
      container.replaceChildren(svg);
      return;
    }
    let lo = Math.min(...xs), hi = Math.max(...xs);
    if (hi === lo) {  // one point: a range around it (counts never below zero)
      if (!integer) lo -= 1;
      hi += 1;
    }
    const px = (x) => L + ((x - lo) / (hi - lo)) * (W - L - R);
    const py = (y) => T + (1 - Math.max(0, Math.min(1, y))) * (H - T - B);
    for (const y of [0, 0.25, 0.5, 0.75, 1]) {
      svg.append(svgEl("line", { x1: L, x2: W - R, y1: py(y), y2: py(y), class: "grid" }));
      svg.append(svgEl("text", { x: L - 6, y: py(y) + 4, "text-anchor": "end", class: "tick" },
        (100 * y).toFixed(0) + "%"));
    }
    for (const x of xTicks(lo, hi, integer)) {
      svg.append(svgEl("text", { x: px(x), y: H - B + 16, "text-anchor": "middle", class: "tick" },
        xFormat(x)));
    }
    svg.append(svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle",
      class: "label" }, xLabel));
    svg.append(svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    for (const s of series) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`);
      svg.append(svgEl("path", { d: d.join(" "), class: "line " + s.cls }));
      for (const p of s.points) {
        svg.append(svgEl("circle", { cx: px(p[0]).toFixed(1), cy: py(p[1]).toFixed(1), r: 2.5,
          class: "dot " + s.cls }));
      }
    }
    container.replaceChildren(svg);
  }

  function renderHistory(reply) {
    const byDeletions = $("plot-deletions"), byTime = $("plot-time");
    if (!reply.ok || !reply.body || !Array.isArray(reply.body.points)) {
      $("history-note").textContent = reply.status === 404
        ? "History: not available on this server." : `History: unavailable (HTTP ${reply.status}).`;
      byDeletions.replaceChildren(el("p", { class: "muted" }, "not available"));
      byTime.replaceChildren(el("p", { class: "muted" }, "not available"));
      return;
    }
    const points = reply.body.points;
    // Validation accuracy: this server's measurements (older servers put them in points).
    const measured = (Array.isArray(reply.body.evaluations) ? reply.body.evaluations : points)
      .filter((p) => typeof p.val_accuracy === "number");
    $("history-note").textContent = `${points.length} points from the run's ledger` +
      (measured.length ? `; validation accuracy measured ${measured.length} times` : "");
    plot(byDeletions, [{ points: points.map((p) => [p.deletion_requests, p.capacity]),
      cls: "capacity" }], (x) => String(x), "deletion requests", true);
    const t0 = Math.min(...points.map((p) => p.time), ...measured.map((p) => p.time));
    const minutes = (x) => ((x - t0) / 60).toFixed(1);
    plot(byTime, [
      { points: points.map((p) => [p.time, p.capacity]), cls: "capacity" },
      { points: measured.map((p) => [p.time, p.val_accuracy]), cls: "accuracy" },
    ], minutes, "minutes since the first point", false);
  }

  // --- the deletion log (needs the token) ---------------------------------------------------
  async function refreshDeletions() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const table = $("deletions"), note = $("deletions-note"), pager = $("deletions-pager");
    if (!token) {
      table.hidden = true;
      pager.hidden = true;
      note.textContent = "The deletion log needs the API token: enter it above.";
      return;
    }
    let offset = deletionOffset === null ? 0 : deletionOffset;
    let reply = await getJson(`/v1/deletions?offset=${offset}&limit=${PAGE}`, token);
    if (reply.ok && deletionOffset === null && reply.body.total > PAGE) {
      offset = reply.body.total - PAGE;  // the newest page
      reply = await getJson(`/v1/deletions?offset=${offset}&limit=${PAGE}`, token);
    }
    if (!reply.ok) {
      table.hidden = true;
      pager.hidden = true;
      note.textContent = reply.status === 401
        ? "The token was refused (401): enter the server's token again."
        : reply.status === 404 ? "Deletion log: not available on this server."
          : `Deletion log: HTTP ${reply.status}.`;
      return;
    }
    const { total, certificates } = reply.body;
    deletionTotal = total;
    if (!total) {
      table.hidden = true;
      pager.hidden = true;
      note.textContent = "No deletion requests yet.";
      return;
    }
    note.textContent = `Deletion requests ${offset + 1}–${offset + certificates.length} of ` +
      `${total}, newest first. Only counts are shown: never a sample id or its text.`;
    replaceRows(table.tBodies[0], certificates.slice().reverse().map((c) => el("tr",
      { "data-request-id": c.request_id },
      el("td", { class: "request-id" }, el("code", {}, c.request_id)),
      el("td", { class: "time" }, isoTime(c.time)),
      el("td", { class: "samples" }, count(c.samples)),
      el("td", { class: "groups" }, count(c.groups_hmac || c.groups_sha256)),
      el("td", { class: "erased", title: (c.erased_stages || []).join(" ") },
        count(c.erased_stages)),
      el("td", { class: "live-shards" }, c.live_shards))));
    table.hidden = false;
    pager.hidden = total <= PAGE;
    $("older").disabled = offset === 0;
    $("newer").disabled = offset + certificates.length >= total;
    deletionOffset = deletionOffset === null ? null : offset;
  }

  // --- the refresh loop ------------------------------------------------------------------------
  async function refresh() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    again = false;
    clearTimeout(timer);
    try {
      // Status, jobs and history need the token unless the server runs with --open-status.
      const token = sessionStorage.getItem(TOKEN_KEY);
      const [status, jobs, history] = await Promise.all([getJson("/v1/status", token),
        getJson("/v1/jobs", token), getJson("/v1/history", token)]);
      if (status.status === 401) {
        $("connection").hidden = false;
        $("connection").textContent = token
          ? "The token was refused (401): enter the server's token again."
          : "This server shows its status only with the API token: enter it under Deletion log below.";
        await refreshDeletions();
        return;
      }
      if (!status.ok) throw new Error(`GET /v1/status answered HTTP ${status.status}`);
      renderStatus(status.body);
      renderJobs(jobs);
      renderHistory(history);
      await refreshDeletions();
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      $("connection").hidden = true;
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      $("connection").hidden = false;
      $("connection").textContent = "Cannot read the server: " + err.message +
        " (showing the last data read).";
    } finally {
      running = false;
      if (again) timer = setTimeout(refresh, 0);
      else if ($("auto-refresh").checked) timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const field = $("token");
      const token = field.value.trim();
      field.value = "";
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      deletionOffset = null;
      refresh();
    });
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      deletionOffset = null;
      refresh();
    });
    $("older").addEventListener("click", () => {
      const current = deletionOffset === null ? Math.max(0, deletionTotal - PAGE) : deletionOffset;
      deletionOffset = Math.max(0, current - PAGE);
      refresh();
    });
    $("newer").addEventListener("click", () => {
      const next = (deletionOffset || 0) + PAGE;
      deletionOffset = next + PAGE >= deletionTotal ? null : next;
      refresh();
    });
    $("auto-refresh").addEventListener("change", () => {
      clearTimeout(timer);
      if ($("auto-refresh").checked) refresh();
    });
    $("refresh-now").addEventListener("click", refresh);
    refresh();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
