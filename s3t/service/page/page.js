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
  let clockSkew = 0;             // the server's clock minus this browser's, in seconds

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
  // "1 shard", "2 shards", "0 shards"; an irregular plural is given.
  const plural = (n, one, many) => `${n} ${n === 1 ? one : (many || one + "s")}`;
  const serverNow = () => Date.now() / 1000 + clockSkew;
  // A duration in words an operator reads at a glance: "45 s", "3 min 20 s", "2 h 05 min".
  function duration(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    if (s < 86400) {
      return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
    }
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }
  function ms(value) {
    if (typeof value !== "number") return "–";
    return (value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0)) + " ms";
  }
  // Requests per second as a rate a person reads: per minute below one a second.
  function rate(perSecond) {
    if (typeof perSecond !== "number") return "–";
    if (perSecond === 0) return "0 /min";
    return perSecond < 1 ? `${(perSecond * 60).toFixed(1)} /min` : `${perSecond.toFixed(2)} /s`;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // --- status: overview, shards, retrain policy and job ------------------------------------
  function renderStatus(status) {
    const runDir = String(status.run_dir || "");
    $("run-name").textContent = runDir.split("/").filter(Boolean).pop() || "";
    if (status.traffic && typeof status.traffic.time === "number") {
      clockSkew = status.traffic.time - Date.now() / 1000;
    }
    $("run-summary").textContent =
      `${status.method}: ${plural(status.shards, "shard")} × ${plural(status.slices, "slice")}, ` +
      `${status.strategy} orderings, budget ${status.budget}; ` +
      plural(status.samples, "training sample");
    $("live-shards").textContent = `${status.live_shards} of ${status.shards}`;
    $("capacity").textContent = pct(status.capacity);
    $("val-accuracy").textContent = !("val_accuracy" in status) ? "not available"
      : status.val_accuracy === null ? "not measured yet" : pct(status.val_accuracy);
    $("deleted").textContent = status.deleted;
    $("deletion-requests").textContent = status.deletion_requests;
    $("live-stages").textContent = "stages_total" in status
      ? `${status.live_stages} of ${status.stages_total}` : status.live_stages;
    $("erased-stages").textContent = status.erased_stages;
    $("training").textContent = status.training || "–";
    renderTraffic(status.traffic);
    renderAudit(status);
    renderErasures(status.erasures);

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

  // How long a job has run (or waited, while queued), by the server's clock.
  function jobElapsed(job) {
    if (typeof job.started !== "number") {
      return job.state === "queued" ? `queued for ${duration(serverNow() - job.created)}` : "–";
    }
    const end = typeof job.finished === "number" ? job.finished : serverNow();
    return duration(end - job.started);
  }

  // When a job should end (or ended), and when the shards serve at full depth again.
  function jobEnd(job) {
    if (typeof job.finished === "number") return `ended ${unixTime(job.finished)}`;
    if (typeof job.estimated_end !== "number") {
      return job.state === "queued" || job.stages_total === null || job.stages_total === undefined
        ? "after its plan and first stage" : "after its first stage";
    }
    const left = job.estimated_end - serverNow();
    return `${unixTime(job.estimated_end)} (` +
      (left > 0 ? `in about ${duration(left)}` : "any moment now") + ")";
  }

  function fullCapacity(job) {
    if (typeof job.finished === "number") return "–";
    if (job.phase === "fallback") return "reached: only other orderings are left";
    if (typeof job.eta_full_capacity_at !== "number") return "after its first stage";
    const left = job.eta_full_capacity_at - serverNow();
    return `${unixTime(job.eta_full_capacity_at)} (` +
      (left > 0 ? `in about ${duration(left)}` : "any moment now") + ")";
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
      ["elapsed", el("span", { class: "job-elapsed" }, jobElapsed(job))],
      ["estimated end", el("span", { class: "job-end" }, jobEnd(job))],
      ["full capacity expected", el("span", { class: "job-capacity" }, fullCapacity(job))],
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

  // --- requests: this server's rates, errors and latency percentiles --------------------------
  const KINDS = [["predictions", "predictions"], ["deletions", "deletions"],
    ["requests", "all requests"]];

  function renderTraffic(traffic) {
    const table = $("traffic"), note = $("traffic-note");
    if (!traffic) {
      table.hidden = true;
      note.textContent = "Request counts: not reported by this server.";
      return;
    }
    note.textContent = `This server since ${unixTime(traffic.since)} (up ` +
      `${duration(traffic.time - traffic.since)}). Rates over the last ${traffic.rate_s} s; ` +
      `latencies (p50, p99) over the last ${plural(traffic.window, "request")} of each kind ` +
      "answered without an error; all requests include this page's own reads.";
    replaceRows(table.tBodies[0], KINDS.filter(([key]) => traffic[key]).map(([key, label]) => {
      const k = traffic[key];
      return el("tr", { "data-kind": key },
        el("td", {}, label), el("td", { class: "requests" }, k.requests),
        el("td", { class: "rate" }, rate(k.rate_per_s)),
        el("td", { class: "errors", title: `${plural(k.errors, "request")} answered 4xx or 5xx, ` +
          `${k.server_errors} of them 5xx` }, `${k.errors} (${k.server_errors})`),
        el("td", { class: "p50" }, ms(k.p50_ms)), el("td", { class: "p99" }, ms(k.p99_ms)));
    }));
    table.hidden = false;
  }

  const ERASURE_STATES = ["received", "exact", "erased", "restored"];

  // --- erasure requests (POST /v1/dsr): how many are in each state, and their callbacks --------
  function renderErasures(erasures) {
    const note = $("erasures-note");
    if (!erasures) {
      note.textContent = "Erasure requests: not reported by this server.";
      return;
    }
    const total = ERASURE_STATES.reduce((sum, state) => sum + erasures[state], 0);
    for (const key of [...ERASURE_STATES, "callbacks_pending", "callbacks_failed"]) {
      $("erasures-" + key.replace("_", "-")).textContent = erasures[key];
    }
    note.textContent = `${plural(total, "erasure request")} (POST /v1/dsr) on the run, by ` +
      "state now: exact (nothing served depends on the subject), erased (its files gone), " +
      "restored (capacity back). " + (erasures.callbacks_failed
        ? `${plural(erasures.callbacks_failed, "status callback")} given up: see the server log.`
        : "No status callback given up.");
  }

  // --- audit: this server's last one, and the certificate chain it checked -------------------
  function renderAudit(status) {
    const result = $("audit-result"), chain = $("chain-status");
    if (!("last_audit" in status)) {
      result.textContent = "Last audit: not reported by this server.";
      chain.textContent = "";
      return;
    }
    const audit = status.last_audit;
    if (!audit) {
      result.className = "muted";
      delete result.dataset.ok;
      result.textContent = "Not audited by this server since it started: press “audit now”.";
      chain.className = "muted";
      chain.textContent = `Certificate chain: not checked yet (${plural(status.deletion_requests,
        "deletion request")} on the run).`;
      return;
    }
    result.className = audit.ok ? "ok" : "bad";
    result.dataset.ok = String(audit.ok);
    result.textContent = `Last audit ${unixTime(audit.time)} (${duration(serverNow() - audit.time)} ` +
      `ago): ${audit.ok ? "the invariant holds" : "VIOLATED"}, ` +
      plural(audit.violations, "finding") + (audit.ok ? "." : ": see GET /v1/audit.");
    chain.className = audit.chain_intact ? "ok" : "bad";
    chain.textContent = `Certificate chain: ${audit.chain_intact ? "intact" : "BROKEN"}, ` +
      `${plural(audit.certificates, "certificate")} checked.`;
  }

  async function auditNow() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const note = $("audit-note"), button = $("audit-now");
    if (!token) {
      note.textContent = "The audit needs the API token: enter it under Deletion log below.";
      return;
    }
    button.disabled = true;
    note.textContent = "auditing…";
    try {
      const reply = await getJson("/v1/audit", token);
      note.textContent = reply.ok ? "audited: the result is above"
        : reply.status === 401 ? "The token was refused (401): enter the server's token again."
          : `The audit failed: HTTP ${reply.status}` +
            (reply.body && reply.body.message ? `: ${reply.body.message}` : ".");
    } catch (err) {
      note.textContent = "The audit failed: " + err.message;
    } finally {
      button.disabled = false;
    }
    refresh();
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
  // A "nice" step (1, 2 or 5 times a power of ten) that cuts `span` into at most `most` parts.
  function niceStep(span, most) {
    const raw = span / most;
    const power = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw) || 10 * power;
  }

  // Ticks at multiples of a nice step within [lo, hi]; on an integer axis whole numbers only.
  function linearTicks(lo, hi, most, integer) {
    let step = niceStep(hi - lo, most);
    if (integer) step = Math.max(1, Math.round(step));
    const ticks = [];
    for (let x = Math.ceil(lo / step - 1e-9) * step; x <= hi + 1e-9; x += step) {
      ticks.push(Number(x.toFixed(10)));
    }
    return ticks;
  }

  // The y range of fractions in [0, 1], scaled to the data: nice bounds around its values,
  // at least 2 percentage points wide, within [0, 1].
  function fractionRange(values) {
    let lo = Math.min(...values), hi = Math.max(...values);
    const minimum = 0.02;
    if (hi - lo < minimum) {
      const mid = (lo + hi) / 2;
      lo = mid - minimum / 2;
      hi = mid + minimum / 2;
    }
    const step = niceStep(hi - lo, 5);
    lo = Math.max(0, Math.floor(lo / step + 1e-9) * step);
    hi = Math.min(1, Math.ceil(hi / step - 1e-9) * step);
    if (hi - lo < step) {  // clamped at an end: keep one step
      if (lo === 0) hi = Math.min(1, step);
      else lo = Math.max(0, hi - step);
    }
    return { lo, hi, step };
  }

  // Time ticks at round local times (every 1 s ... 1 week), at most `most` of them, labelled
  // as an operator reads a clock: HH:MM:SS, HH:MM, or the date.
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800];
  function timeTicks(lo, hi, most) {
    const step = TIME_STEPS.find((s) => (hi - lo) / s <= most) || TIME_STEPS[TIME_STEPS.length - 1];
    // round in local time: shift by the zone's offset at lo (seconds east of UTC)
    const zone = -new Date(lo * 1000).getTimezoneOffset() * 60;
    const ticks = [];
    for (let t = Math.ceil((lo + zone) / step) * step - zone; t <= hi; t += step) ticks.push(t);
    const two = (n) => String(n).padStart(2, "0");
    const format = (t) => {
      const d = new Date(t * 1000);
      if (step >= 86400) return `${two(d.getMonth() + 1)}-${two(d.getDate())}`;
      const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
      return step < 60 ? `${hm}:${two(d.getSeconds())}` : hm;
    };
    return { ticks, format };
  }

  function dayOf(seconds) {
    return localTime(new Date(seconds * 1000)).slice(0, 10);
  }

  // series: [{points: [[x, y], ...], cls}]; y is a fraction in [0, 1], both axes scaled to
  // the data. xAxis: {kind: "count" | "time", label}.
  function plot(container, series, xAxis) {
    const W = 480, H = 220, L = 48, R = 14, T = 10, B = 34;
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1]));
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart" });
    if (!xs.length) {
      svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
        "no points yet"));
      container.replaceChildren(svg);
      return;
    }
    let lo = Math.min(...xs), hi = Math.max(...xs);
    if (hi === lo) {  // one point: a range around it (counts never below zero)
      if (xAxis.kind === "time") {
        lo -= 30;
        hi += 30;
      } else {
        lo = Math.max(0, lo - 1);
        hi += 1;
      }
    }
    const y = fractionRange(ys);
    const px = (x) => L + ((x - lo) / (hi - lo)) * (W - L - R);
    const py = (v) => T + (1 - (Math.max(y.lo, Math.min(y.hi, v)) - y.lo) / (y.hi - y.lo)) * (H - T - B);
    const decimals = y.step < 0.01 ? 1 : 0;
    // an x tick label near an end of the axis is anchored there, so it is never cut off
    const xTick = (x, text) => svgEl("text", { x: px(x), y: H - B + 16, class: "tick x",
      "text-anchor": px(x) > W - R - 18 ? "end" : px(x) < L + 18 ? "start" : "middle" }, text);
    for (const v of linearTicks(y.lo, y.hi, 5, false)) {
      svg.append(svgEl("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), class: "grid" }));
      svg.append(svgEl("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end", class: "tick y" },
        (100 * v).toFixed(decimals) + "%"));
    }
    let label = xAxis.label;
    if (xAxis.kind === "time") {
      const { ticks, format } = timeTicks(lo, hi, 5);
      for (const x of ticks) svg.append(xTick(x, format(x)));
      label += dayOf(lo) === dayOf(hi) ? ` on ${dayOf(lo)}` : ` from ${dayOf(lo)} to ${dayOf(hi)}`;
    } else {
      for (const x of linearTicks(lo, hi, 6, true)) svg.append(xTick(x, String(x)));
    }
    svg.append(svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle",
      class: "label" }, label));
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
    $("history-note").textContent = `${plural(points.length, "point")} from the run's ledger` +
      (measured.length ? `; validation accuracy measured ${plural(measured.length, "time")}` : "");
    plot(byDeletions, [{ points: points.map((p) => [p.deletion_requests, p.capacity]),
      cls: "capacity" }], { kind: "count", label: "deletion requests" });
    plot(byTime, [
      { points: points.map((p) => [p.time, p.capacity]), cls: "capacity" },
      { points: measured.map((p) => [p.time, p.val_accuracy]), cls: "accuracy" },
    ], { kind: "time", label: "local time" });
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
    const clientIds = reply.body.client_request_ids || {};
    deletionTotal = total;
    if (!total) {
      table.hidden = true;
      pager.hidden = true;
      note.textContent = "No deletion requests yet.";
      return;
    }
    const shown = certificates.length === 1 ? `Deletion request ${offset + 1} of ${total}`
      : `Deletion requests ${offset + 1}–${offset + certificates.length} of ${total}`;
    note.textContent = `${shown}, newest first. Only counts are shown: never a sample id or ` +
      "its text. The client request id is the request_id the client sent (its idempotency key).";
    replaceRows(table.tBodies[0], certificates.slice().reverse().map((c) => el("tr",
      { "data-request-id": c.request_id },
      el("td", { class: "request-id" }, el("code", {}, c.request_id)),
      el("td", { class: "client-id" }, (clientIds[c.request_id] || []).length
        ? el("code", {}, clientIds[c.request_id].join(", ")) : "–"),
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
      $("updated").textContent = "updated " + localTime(new Date()).slice(11);
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
    $("audit-now").addEventListener("click", auditNow);
    refresh();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
