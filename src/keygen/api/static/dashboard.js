/* Keygen's dashboard: polls the service once a second and draws its history with uPlot.
 *
 * Sources: GET metrics/history?window=W (columnar series), health (the Redis block and the
 * layers), alerts, ledger (every few seconds). All URLs are relative to the page, so it also
 * works behind a proxy that serves Keygen under a prefix. window.keygenDashboard exposes the
 * charts and the last documents (the browser test reads the charts' data through it).
 */
"use strict";

(() => {
  const SOURCES = ["redis_sentinel", "postgresql", "emergency_reserve", "sqlite"];
  const LABELS = {
    redis_sentinel: "Redis",
    postgresql: "PostgreSQL",
    emergency_reserve: "reserve",
    sqlite: "SQLite",
  };
  const COLORS = {
    redis_sentinel: "#c2410c",
    postgresql: "#1d4ed8",
    emergency_reserve: "#7e22ce",
    sqlite: "#0f766e",
  };
  const WINDOWS = ["5m", "15m", "1h", "24h"];
  const DEFAULT_WINDOW = "15m";
  const REFRESH_MS = 1000;
  const LEDGER_EVERY_TICKS = 5; // the ledger moves slowly; asking it costs a query
  const CHART_HEIGHT = 190;
  const MAX_ID = 2n ** 63n - 1n;
  const STATE_ORDER = { firing: 0, pending: 1, inactive: 2 };
  const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };

  const params = new URLSearchParams(window.location.search);
  const state = {
    window: WINDOWS.includes(params.get("window")) ? params.get("window") : DEFAULT_WINDOW,
    history: null,
    health: null,
    alerts: null,
    ledger: null,
    problems: {}, // document name -> why the last request for it failed
    ticks: 0,
    updatedAt: null,
  };
  const charts = {}; // name -> uPlot
  let chartSources = null; // the layers the charts were built for

  /* ---- formatting ---- */

  const intFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const compactFormat = new Intl.NumberFormat("en-US", {
    notation: "compact",
    maximumFractionDigits: 1,
  });

  function fmtNumber(v, digits = 2) {
    if (v === null || v === undefined) return "—";
    const n = Number(v);
    const size = Math.abs(n);
    if (size >= 1e15) return n.toExponential(2).replace("e+", "e"); // headroom-sized
    if (size >= 1e4) return compactFormat.format(n);
    if (Number.isInteger(n)) return intFormat.format(n);
    return size < 0.01 ? n.toPrecision(2) : n.toFixed(digits);
  }

  function fmtExact(v) {
    if (v === null || v === undefined) return "—";
    return typeof v === "bigint" ? v.toLocaleString("en-US") : intFormat.format(v);
  }

  function fmtTime(t) {
    if (t === null || t === undefined) return "—";
    const date = new Date(t * 1000);
    const time = date.toLocaleTimeString("en-GB", { hour12: false });
    const age = Date.now() / 1000 - t;
    return age > 86400 ? `${date.toLocaleDateString("en-CA")} ${time}` : time;
  }

  // One line per time tick (uPlot's default adds a second line with the date).
  function fmtTick(t, increment) {
    const date = new Date(t * 1000);
    if (increment >= 86400) return date.toLocaleDateString("en-CA");
    const options = { hour12: false, hour: "2-digit", minute: "2-digit" };
    if (increment < 60) options.second = "2-digit";
    return date.toLocaleTimeString("en-GB", options);
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.floor(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function fmtHeadroom(headroom) {
    const pct = (Number(headroom) / Number(MAX_ID)) * 100;
    if (pct > 0 && pct < 0.0001) return "< 0.0001 %";
    return `${pct.toFixed(pct < 1 ? 4 : 2)} %`;
  }

  /* ---- DOM helpers (server text always goes in as textContent) ---- */

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(text, stateName) {
    return h("span", { class: "badge", "data-state": stateName }, text);
  }

  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  /* ---- fetching ---- */

  // IDs go up to 2^63-1, beyond a double's exact integers: keep big ones exact as BigInt
  // (the reviver's third argument, the source text, is in Chromium 114+ and Firefox 135+).
  function exactIntegers(key, value, context) {
    if (
      typeof value === "number" &&
      !Number.isSafeInteger(value) &&
      context &&
      /^-?\d+$/.test(context.source)
    ) {
      return BigInt(context.source);
    }
    return value;
  }

  async function getJSON(path, okStatuses = [200]) {
    const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    const text = await response.text();
    if (!okStatuses.includes(response.status)) {
      throw new Error(`${path}: HTTP ${response.status}`);
    }
    return JSON.parse(text, exactIntegers);
  }

  async function tick() {
    const wanted = [
      ["history", `metrics/history?window=${encodeURIComponent(state.window)}`, [200]],
      ["health", "health", [200, 503]], // 503 is "unhealthy", with the same document
      ["alerts", "alerts", [200]],
    ];
    if (state.ledger === null || state.ticks % LEDGER_EVERY_TICKS === 0) {
      wanted.push(["ledger", "ledger", [200]]);
    }
    const results = await Promise.allSettled(wanted.map(([, path, ok]) => getJSON(path, ok)));
    results.forEach((result, i) => {
      const name = wanted[i][0];
      if (result.status === "fulfilled") {
        state[name] = result.value;
        delete state.problems[name];
      } else {
        state.problems[name] = result.reason instanceof Error ? result.reason.message : String(result.reason);
      }
    });
    state.ticks += 1;
    state.updatedAt = Date.now() / 1000;
    render();
  }

  let timer = null;
  let running = false;

  async function loop() {
    timer = null;
    if (running) return;
    running = true;
    const started = performance.now();
    try {
      if (!document.hidden) await tick();
    } finally {
      running = false;
      timer = setTimeout(loop, Math.max(0, REFRESH_MS - (performance.now() - started)));
    }
  }

  function refreshNow() {
    if (running) return; // the tick in flight reschedules itself
    if (timer !== null) clearTimeout(timer);
    loop();
  }

  /* ---- charts ---- */

  // Counts (workers, failovers, locks, seconds) get whole-number ticks.
  const WHOLE_INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 1e5, 1e6, 1e7];

  function yRange(u, min, max) {
    return [0, max === null || max === undefined || max <= 0 ? 1 : max * 1.1];
  }

  function chartSpecs(sources) {
    const perSource = (prefix, extra) =>
      sources.map((source) => ({
        key: prefix + source,
        label: LABELS[source] || source,
        stroke: COLORS[source] || "#444",
        ...extra,
      }));
    return {
      rate: {
        series: [
          { key: "requests_per_second", label: "all", stroke: "#1c2430", width: 2 },
          ...perSource("rate_", {}),
        ],
        empty: "no requests in this window",
      },
      latency: {
        series: [
          { key: "latency_p50_ms", label: "p50", stroke: "#0f766e" },
          { key: "latency_p95_ms", label: "p95", stroke: "#c2410c" },
          { key: "latency_p99_ms", label: "p99", stroke: "#b42318" },
        ],
        empty: "no requests in this window",
      },
      errors: {
        // error_rate is a fraction of the allocation requests; shown in percent.
        series: [{ key: "error_rate", label: "failed", stroke: "#b42318", map: (v) => v * 100 }],
        format: (v) => `${fmtNumber(v)} %`,
        empty: "no requests in this window",
      },
      layers: { lanes: true, series: perSource("layer_up_", { stepped: true, width: 4 }) },
      breakers: {
        series: perSource("breaker_open_", { stepped: true }),
        format: (v) => fmtNumber(v, 0),
        whole: true,
      },
      reserve: {
        series: [
          { key: "reserve_remaining_ids", label: "IDs", stroke: "#7e22ce", scale: "ids" },
          {
            key: "reserve_remaining_seconds",
            label: "time left",
            stroke: "#9a6700",
            scale: "seconds",
            format: fmtDuration,
            whole: true,
          },
        ],
        empty: "no emergency reserve on this instance",
      },
      redis: {
        series: [
          { key: "redis_failovers", label: "failovers", stroke: "#b42318", stepped: true },
          { key: "active_locks", label: "locks held", stroke: "#1d4ed8", stepped: true },
        ],
        format: (v) => fmtNumber(v, 0),
        whole: true,
        empty: "Redis is not configured",
      },
    };
  }

  function laneValue(index) {
    return (v) => (v === null || v === undefined ? null : index + (v > 0 ? 0.8 : 0.2));
  }

  function uplotOptions(spec, width) {
    const scaleNames = [...new Set(spec.series.map((s) => s.scale || "y"))];
    const scales = { x: { time: true } };
    const axes = [
      {
        stroke: "#66707d",
        grid: { stroke: "#eef1f4" },
        space: 70,
        values: (u, splits, axis, space, increment) => splits.map((t) => fmtTick(t, increment)),
      },
    ];
    scaleNames.forEach((name, i) => {
      const first = spec.series.find((s) => (s.scale || "y") === name);
      const format = first.format || spec.format || ((v) => fmtNumber(v));
      scales[name] = { range: yRange };
      axes.push({
        scale: name,
        side: i === 0 ? 3 : 1,
        stroke: "#66707d",
        grid: { show: i === 0, stroke: "#eef1f4" },
        size: 60,
        values: (u, splits) => splits.map((v) => format(v)),
        incrs: first.whole || spec.whole ? WHOLE_INCREMENTS : undefined,
      });
    });
    if (spec.lanes) {
      const n = spec.series.length;
      scales.y = { range: [0, Math.max(n, 1)] };
      axes[1].splits = () => spec.series.map((_, k) => k + 0.5);
      axes[1].values = (u, splits) => splits.map((v) => spec.series[Math.floor(v)].label);
      axes[1].size = 90;
    }
    const series = [
      { label: "time", value: (u, v) => fmtTime(v) },
      ...spec.series.map((s, k) => ({
        label: s.label,
        stroke: s.stroke,
        width: s.width || 1.5,
        scale: s.scale || "y",
        spanGaps: false,
        points: { show: false },
        paths: s.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        value: spec.lanes
          ? (u, v) => (v === null || v === undefined ? "—" : v % 1 > 0.5 ? "up" : "down")
          : (u, v) => (v === null || v === undefined ? "—" : (s.format || spec.format || fmtNumber)(v)),
      })),
    ];
    return {
      width,
      height: CHART_HEIGHT,
      scales,
      axes,
      series,
      cursor: { drag: { x: false, y: false, setScale: false } },
      legend: { live: true },
    };
  }

  function chartData(spec, history) {
    const columns = history.series;
    const time = columns.time || [];
    return [
      time,
      ...spec.series.map((s, k) => {
        const column = columns[s.key] || time.map(() => null);
        const map = spec.lanes ? laneValue(k) : s.map;
        return map ? column.map((v) => (v === null || v === undefined ? null : map(v))) : column;
      }),
    ];
  }

  function configuredSources() {
    const layers = (state.health && state.health.layers) || [];
    const named = layers.map((layer) => layer.source);
    const known = SOURCES.filter((s) => named.includes(s));
    return [...known, ...named.filter((s) => !SOURCES.includes(s))];
  }

  function innerWidth(card) {
    const style = getComputedStyle(card);
    return Math.max(200, card.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight));
  }

  const resizer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const chart = charts[entry.target.dataset.chart];
      const width = Math.floor(innerWidth(entry.target));
      if (chart && Math.abs(chart.width - width) > 1) chart.setSize({ width, height: CHART_HEIGHT });
    }
  });

  function buildCharts(sources) {
    for (const chart of Object.values(charts)) chart.destroy();
    const specs = chartSpecs(sources);
    for (const card of document.querySelectorAll("[data-chart]")) {
      const name = card.dataset.chart;
      card.querySelector(".empty")?.remove();
      const options = uplotOptions(specs[name], Math.floor(innerWidth(card)));
      const chart = new uPlot(options, chartData(specs[name], state.history), card);
      chart.spec = specs[name];
      charts[name] = chart;
      card.append(h("p", { class: "empty", hidden: true }));
      resizer.observe(card);
    }
    chartSources = sources.join(",");
  }

  function renderCharts() {
    if (!state.history || !state.health) return;
    const sources = configuredSources();
    if (chartSources !== sources.join(",")) buildCharts(sources);
    for (const [name, chart] of Object.entries(charts)) {
      const data = chartData(chart.spec, state.history);
      chart.setData(data);
      // Away from the cursor, the legend shows the latest values rather than dashes.
      if (chart.cursor.idx === null || chart.cursor.idx === undefined) {
        chart.setLegend({ idx: data[0].length - 1 });
      }
      const hasPoints = data.slice(1).some((column) => column.some((v) => v !== null));
      const empty = chart.root.parentElement.querySelector(".empty");
      empty.textContent = chart.spec.empty || "no data in this window";
      empty.hidden = hasPoints;
    }
  }

  /* ---- panels ---- */

  function renderHeader() {
    const health = state.health;
    const status = document.getElementById("status");
    if (Object.keys(state.problems).length && !health) {
      status.textContent = "unreachable";
      status.dataset.state = "unhealthy";
    } else if (health) {
      status.textContent = health.status;
      status.dataset.state = health.status;
      setText(
        "instance",
        `${health.instance_id} · v${health.version} · ${health.ledger} ledger · up ${fmtDuration(health.uptime_seconds)}`,
      );
    }
    setText("updated", state.updatedAt ? `updated ${fmtTime(state.updatedAt)}` : "");
    const problems = document.getElementById("problems");
    const messages = Object.values(state.problems);
    problems.hidden = messages.length === 0;
    problems.textContent = messages.length ? `Not answering: ${messages.join("; ")}` : "";
    for (const button of document.querySelectorAll("#windows button")) {
      button.setAttribute("aria-pressed", String(button.dataset.window === state.window));
    }
  }

  function renderLayers() {
    const body = document.querySelector("#layers tbody");
    const layers = (state.health && state.health.layers) || [];
    body.replaceChildren(
      ...layers.map((layer) =>
        h(
          "tr",
          { "data-source": layer.source },
          h("td", {}, LABELS[layer.source] || layer.source),
          h("td", {}, badge(layer.health, layer.health)),
          h("td", {}, badge(layer.breaker, layer.breaker === "closed" ? "healthy" : "unhealthy")),
          h("td", { class: "num" }, layer.latency_ms === null ? "—" : `${fmtNumber(layer.latency_ms)} ms`),
          h("td", { class: "muted" }, layer.error || ""),
        ),
      ),
    );
  }

  function failoverEvents() {
    const columns = state.history ? state.history.series : {};
    const time = columns.time || [];
    const counts = columns.redis_failovers || [];
    const events = [];
    let previous = null;
    counts.forEach((count, i) => {
      if (count === null || count === undefined) return;
      if (previous !== null && count > previous) events.push({ at: time[i], total: count });
      previous = count;
    });
    return events.reverse();
  }

  function renderRedis() {
    const redis = state.health && state.health.redis;
    if (!redis) {
      setText("redis-master", state.health ? "not configured" : "—");
      for (const id of ["redis-quorum", "redis-failovers", "redis-last-failover"]) setText(id, "—");
      document
        .getElementById("failover-timeline")
        .replaceChildren(h("li", { class: "muted" }, state.health ? "Redis is not configured" : "—"));
      return;
    }
    setText("redis-master", redis.master || "unknown (no Sentinel answers)");
    const quorum = document.getElementById("redis-quorum");
    quorum.replaceChildren(
      redis.sentinel_quorum ? badge("reached", "healthy") : badge("lost: no failover possible", "unhealthy"),
    );
    setText("redis-failovers", fmtNumber(redis.failovers, 0));
    setText("redis-last-failover", redis.last_failover_at ? fmtTime(redis.last_failover_at) : "never");
    const events = failoverEvents();
    document
      .getElementById("failover-timeline")
      .replaceChildren(
        ...(events.length
          ? events.map((e) => h("li", {}, `${fmtTime(e.at)}: failover (total ${fmtNumber(e.total, 0)})`))
          : [h("li", { class: "muted" }, "none in this window")]),
      );
  }

  function labelText(labels) {
    return Object.entries(labels || {})
      .map(([k, v]) => `${k}=${v}`)
      .join(", ");
  }

  function renderAlerts() {
    const alerts = ((state.alerts && state.alerts.alerts) || []).slice();
    alerts.sort(
      (a, b) =>
        (STATE_ORDER[a.state] ?? 3) - (STATE_ORDER[b.state] ?? 3) ||
        (SEVERITY_ORDER[a.severity] ?? 3) - (SEVERITY_ORDER[b.severity] ?? 3) ||
        a.name.localeCompare(b.name),
    );
    const counts = { firing: 0, pending: 0, inactive: 0 };
    for (const alert of alerts) counts[alert.state] = (counts[alert.state] || 0) + 1;
    setText(
      "alerts-summary",
      state.alerts ? `${counts.firing} firing, ${counts.pending} pending, ${counts.inactive} inactive` : "",
    );
    document.querySelector("#alerts tbody").replaceChildren(
      ...alerts.map((alert) =>
        h(
          "tr",
          { class: alert.state, "data-alert": alert.name, "data-state": alert.state },
          h("td", {}, badge(alert.state, alert.state)),
          h("td", { title: alert.runbook ? `runbook: ${alert.runbook}` : null }, alert.name),
          h("td", {}, alert.severity || ""),
          h("td", {}, labelText(alert.labels)),
          h("td", { class: "num" }, fmtNumber(alert.value)),
          h("td", { class: "num" }, fmtNumber(alert.threshold)),
          h("td", {}, alert.state === "inactive" ? "" : fmtTime(alert.since)),
          h("td", {}, alert.summary || ""),
        ),
      ),
    );
    const quiet = document.getElementById("alerts-quiet");
    quiet.hidden = alerts.length > 0;
    quiet.textContent = state.alerts ? "no alert rules" : "";
  }

  function renderLedger() {
    const ledger = state.ledger;
    setText("ledger-kind", ledger ? `(${ledger.ledger}; least headroom first)` : "");
    const rows = (ledger && ledger.namespaces) || [];
    document.querySelector("#ledger tbody").replaceChildren(
      ...rows.map((ns) => {
        const low = Number(ns.headroom) / Number(MAX_ID) < 0.01;
        return h(
          "tr",
          { class: low ? "firing" : null, "data-namespace": ns.namespace },
          h("td", {}, ns.namespace),
          h("td", { class: "num" }, fmtExact(ns.next_id)),
          h("td", { class: "num" }, fmtExact(ns.headroom)),
          h("td", { class: "num" }, fmtHeadroom(ns.headroom)),
          h("td", { class: "num" }, fmtNumber(ns.grants, 0)),
        );
      }),
    );
  }

  function render() {
    renderHeader();
    renderAlerts();
    renderLayers();
    renderRedis();
    renderCharts();
    renderLedger();
  }

  /* ---- start ---- */

  for (const button of document.querySelectorAll("#windows button")) {
    button.addEventListener("click", () => {
      state.window = button.dataset.window;
      const url = new URL(window.location.href);
      url.searchParams.set("window", state.window);
      window.history.replaceState(null, "", url);
      renderHeader();
      refreshNow();
    });
  }

  window.keygenDashboard = {
    state,
    charts,
    /** Per chart: its x points and, per series label, the points that hold a value. */
    points() {
      const out = {};
      for (const [name, chart] of Object.entries(charts)) {
        const series = {};
        chart.series.slice(1).forEach((s, i) => {
          series[s.label] = chart.data[i + 1].filter((v) => v !== null && v !== undefined).length;
        });
        out[name] = { x: chart.data[0].length, series };
      }
      return out;
    },
  };

  renderHeader();
  loop();
})();
