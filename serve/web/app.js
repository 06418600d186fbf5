// candleray dashboard: one page over the REST API in docs/API.md. No framework, no build step;
// the chart library is installed from npm (serve/web/package-lock.json) and served by the app.
"use strict";

const LC = window.LightweightCharts;
const $ = (sel) => document.querySelector(sel);
const state = {
  session: null,       // selected session status
  lastTime: null,      // newest candle time (UNIX s) drawn for the selected session
  candles: new Map(),  // time -> candle
  ghosts: new Map(),
  pivots: new Map(),
  signals: new Map(),
  trades: [],
  annotations: [],
  marking: null,       // {entry: {time, price}} while the user marks a trade
  userMoved: false,    // the user scrolled or zoomed the chart: stop fitting it to the data
};

// ---- API ------------------------------------------------------------------------------------

function token() { return $("#token").value.trim(); }

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && token()) headers["Authorization"] = `Bearer ${token()}`;
  const reply = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await reply.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!reply.ok) {
    const msg = explain(data) || `${reply.status} ${reply.statusText}`;
    toast(`${method} ${path}: ${msg}`);
    const err = new Error(msg);
    err.status = reply.status;
    throw err;
  }
  return data;
}

function explain(data) {
  if (!data || data.detail === undefined) return null;
  if (typeof data.detail === "string") return data.detail;
  if (Array.isArray(data.detail)) {  // FastAPI's field errors
    return data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  return JSON.stringify(data.detail);
}

let toastTimer = null;
function toast(msg) {
  const el = $("#toast");
  el.textContent = msg;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 8000);
}

const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : typeof v === "number" ? v.toFixed(d) : String(v));
const iso = (t) => new Date(t * 1000).toISOString();
// a session's symbol is its key, "synthetic:SYN0@1h": annotations and backtests take the
// symbol and the timeframe apart
const baseSymbol = (s) => s.symbol.split("@")[0];

function fillMetrics(el, pairs) {
  el.replaceChildren(...pairs.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v; dd.dataset.key = k;
    return [dt, dd];
  }));
}

// ---- charts ---------------------------------------------------------------------------------

const chartOpts = {
  layout: { background: { color: "#151b22" }, textColor: "#9fb3c8" },
  grid: { vertLines: { color: "#1d2630" }, horzLines: { color: "#1d2630" } },
  timeScale: { timeVisible: true, secondsVisible: false },
};
const chart = LC.createChart($("#chart"), { ...chartOpts, autoSize: true });
const candleSeries = chart.addSeries(LC.CandlestickSeries, {
  upColor: "#26a69a", downColor: "#ef5350", borderVisible: false, wickUpColor: "#26a69a", wickDownColor: "#ef5350",
});
// ghost candles: the predicted next candle, translucent blue, so they never pass for real ones
const ghostSeries = chart.addSeries(LC.CandlestickSeries, {
  upColor: "rgba(66,135,245,0.30)", downColor: "rgba(66,135,245,0.30)",
  borderVisible: true, borderUpColor: "#4287f5", borderDownColor: "#4287f5",
  wickUpColor: "#4287f5", wickDownColor: "#4287f5", lastValueVisible: false, priceLineVisible: false,
});
const markers = LC.createSeriesMarkers(candleSeries, []);

const lossChart = LC.createChart($("#loss-chart"), { ...chartOpts, autoSize: true, timeScale: { visible: false } });
const lossSeries = lossChart.addSeries(LC.LineSeries, { color: "#ef5350", lineWidth: 2, title: "loss" });
const accSeries = lossChart.addSeries(LC.LineSeries, { color: "#26a69a", lineWidth: 2, title: "dir acc", priceScaleId: "left" });
lossChart.applyOptions({ leftPriceScale: { visible: true } });

// Shapes and colours carry the meaning (legend in the page): text on hundreds of markers
// would hide the candles. Only annotations, the user's own marks, are labelled.
function redrawMarkers() {
  const m = [];
  for (const p of state.pivots.values()) {
    m.push(p.kind === "H"
      ? { time: p.time, position: "aboveBar", color: "#f0b429", shape: "circle", size: 0.5 }
      : { time: p.time, position: "belowBar", color: "#f0b429", shape: "circle", size: 0.5 });
  }
  for (const s of state.signals.values()) {
    if (s.action === "BUY") m.push({ time: s.time, position: "belowBar", color: "#26a69a", shape: "arrowUp", size: 0.6 });
    if (s.action === "SELL") m.push({ time: s.time, position: "aboveBar", color: "#ef5350", shape: "arrowDown", size: 0.6 });
  }
  for (const t of state.trades) {
    const win = (t.pnl ?? 0) >= 0;
    m.push({ time: t.entry_time, position: "belowBar", color: "#b388ff", shape: "square", size: 0.6 });
    if (t.exit_time) m.push({ time: t.exit_time, position: "aboveBar", color: win ? "#26a69a" : "#ef5350", shape: "square", size: 0.6 });
  }
  for (const a of state.annotations) {
    m.push({ time: a.entry, position: "belowBar", color: "#ff80ab", shape: a.side === "long" ? "arrowUp" : "arrowDown", text: `A ${a.side}` });
    m.push({ time: a.exit, position: "aboveBar", color: "#ff80ab", shape: "circle", text: "A exit" });
  }
  // markers on times the series does not have would be dropped by the library: keep drawn candles only
  const have = state.candles;
  markers.setMarkers(m.filter((x) => have.has(x.time)).sort((a, b) => a.time - b.time));
}

// ---- sessions -------------------------------------------------------------------------------

async function startSession(mode) {
  const body = {
    symbol: $("#symbol").value.trim(),
    timeframe: $("#timeframe").value.trim() || null,
    mode,
    source: $("#source").value,
    speed: Number($("#speed").value),
  };
  const s = await api("POST", "sessions", body);
  await refreshSessions();
  select(s);
}

async function refreshSessions() {
  const list = await api("GET", "sessions");
  const tbody = $("#sessions tbody");
  tbody.replaceChildren(...list.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.id = s.id;
    if (state.session && state.session.id === s.id) tr.classList.add("selected");
    const m = s.metrics || {};
    for (const v of [s.id, s.mode, m.candles ?? 0, fmt(m.direction_acc), fmt(m.paper_pnl, 2), s.state || ""]) {
      const td = document.createElement("td"); td.textContent = v; td.title = v; tr.append(td);
    }
    tr.addEventListener("click", () => select(s));
    return tr;
  }));
  if (state.session) {
    const cur = list.find((s) => s.id === state.session.id);
    if (cur) showSession(cur);
  }
}

function select(s) {
  const changed = !state.session || state.session.id !== s.id;
  state.session = s;
  if (changed) {
    state.lastTime = null;
    for (const k of ["candles", "ghosts", "pivots", "signals"]) state[k] = new Map();
    state.trades = [];
    state.userMoved = false;
    candleSeries.setData([]);
    ghostSeries.setData([]);
    loadAnnotations();
  }
  $("#session-panel").hidden = false;
  $("#sel-id").textContent = s.id;
  $("#chart-title").textContent = `${s.symbol} — ${s.mode}`;
  for (const tr of document.querySelectorAll("#sessions tbody tr")) tr.classList.toggle("selected", tr.dataset.id === s.id);
  showSession(s);
  refreshChart();
}

function showSession(s) {
  state.session = s;
  $("#mode-select").value = s.mode;
  $("#chart-title").textContent = `${s.symbol} — ${s.mode}`;
  const m = s.metrics || {};
  fillMetrics($("#session-metrics"), [
    ["state", s.state ?? "–"],
    ["candles", m.candles ?? 0],
    ["predictions", m.predictions ?? 0],
    ["settled", m.settled ?? 0],
    ["direction accuracy", fmt(m.direction_acc)],
    [`rolling accuracy (${m.rolling_n ?? 0})`, fmt(m.direction_acc_rolling)],
    ["close error %", fmt(m.mae_pct_close, 4)],
    ["paper PnL", fmt(m.paper_pnl, 2)],
    ["trades / win rate", `${m.trades ?? 0} / ${fmt(m.win_rate, 2)}`],
    ["train requested / done / dropped", `${m.train_requested ?? 0} / ${m.train_done ?? 0} / ${m.train_dropped ?? 0}`],
    ["timeouts", m.train_timeouts ?? 0],
    ["last train", m.last_train_time ? new Date(m.last_train_time * 1000).toLocaleTimeString() : "–"],
    ["loss trend", m.loss_trend ?? "–"],
    ["weights version", m.weights_version ?? "–"],
  ]);
}

async function refreshChart() {
  const s = state.session;
  if (!s) return;
  const q = state.lastTime === null ? "" : `?since=${encodeURIComponent(iso(state.lastTime))}`;
  const c = await api("GET", `sessions/${encodeURIComponent(s.id)}/chart${q}`);
  if (!state.session || state.session.id !== s.id) return;
  const first = state.lastTime === null;
  for (const k of c.candles) state.candles.set(k.time, k);
  for (const g of c.ghosts) state.ghosts.set(g.time, g);
  for (const p of c.pivots) state.pivots.set(p.time, p);
  for (const x of c.signals) state.signals.set(x.time, x);
  if (c.trades.length || first) state.trades = mergeTrades(state.trades, c.trades);
  const sorted = (m) => [...m.values()].sort((a, b) => a.time - b.time);
  if (first || c.candles.length) {
    candleSeries.setData(sorted(state.candles));
    ghostSeries.setData(sorted(state.ghosts));
    redrawMarkers();
  }
  if (state.candles.size) state.lastTime = Math.max(...state.candles.keys());
  // follow the data (the whole series in view) until the user scrolls or zooms
  if (state.candles.size && (first || (c.candles.length && !state.userMoved))) chart.timeScale().fitContent();
}

function mergeTrades(old, fresh) {
  const key = (t) => `${t.entry_time}:${t.side}`;
  const m = new Map(old.map((t) => [key(t), t]));
  for (const t of fresh) m.set(key(t), t);
  return [...m.values()];
}

async function switchMode() {
  if (!state.session) return;
  const s = await api("POST", `sessions/${encodeURIComponent(state.session.id)}/mode`, { mode: $("#mode-select").value });
  showSession(s);
  refreshSessions();
}

async function stopSession() {
  if (!state.session) return;
  await api("DELETE", `sessions/${encodeURIComponent(state.session.id)}`);
  state.session = null;
  $("#session-panel").hidden = true;
  refreshSessions();
}

async function trainManual(action) {
  if (!state.session) return toast("select a session first");
  const r = await api("POST", `sessions/${encodeURIComponent(state.session.id)}/train`, { action });
  $("#job").textContent = `manual ${action}: ${r.queued ?? 1} sample queued for training`;
}

// ---- annotations: click the entry candle, then the exit candle, then choose the side ---------

function startMarking() {
  if (!state.session) return toast("select a session first: annotations belong to its symbol and timeframe");
  state.marking = { entry: null };
  $("#mark-hint").textContent = "click the entry candle";
}

for (const ev of ["wheel", "mousedown", "touchstart"]) {
  $("#chart").addEventListener(ev, () => { if (!state.marking) state.userMoved = true; }, { passive: true });
}

chart.subscribeClick((param) => {
  if (!state.marking || param.time === undefined) return;
  const bar = param.seriesData.get(candleSeries);
  if (!bar) return;
  if (!state.marking.entry) {
    state.marking.entry = { time: param.time, price: bar.close };
    $("#mark-hint").textContent = "now click the exit candle";
    return;
  }
  const entry = state.marking.entry;
  const exit = { time: param.time, price: bar.close };
  state.marking = null;
  $("#mark-hint").textContent = "";
  askSide(entry, exit);
});

function askSide(entry, exit) {
  const dlg = $("#side-dialog");
  $("#side-text").textContent = `Trade from ${iso(entry.time)} @ ${fmt(entry.price, 5)} to ${iso(exit.time)} @ ${fmt(exit.price, 5)}`;
  $("#side-note").value = "";
  dlg.onclose = async () => {
    const side = dlg.returnValue;
    if (side !== "long" && side !== "short") return;
    const s = state.session;
    await api("POST", "annotations", {
      symbol: baseSymbol(s), timeframe: s.timeframe, side,
      entry_time: iso(entry.time), entry_price: entry.price,
      exit_time: iso(exit.time), exit_price: exit.price,
      note: $("#side-note").value,
    });
    await loadAnnotations();
  };
  dlg.showModal();
}

async function loadAnnotations() {
  const s = state.session;
  if (!s) return;
  const list = await api("GET", `annotations?symbol=${encodeURIComponent(baseSymbol(s))}&timeframe=${encodeURIComponent(s.timeframe)}`);
  state.annotations = list.map((a) => ({
    entry: Date.parse(a.entry_time) / 1000, exit: Date.parse(a.exit_time) / 1000, side: a.side, id: a.id,
  }));
  redrawMarkers();
}

// ---- jobs: training on annotations, backtests -----------------------------------------------

async function followJob(jobId, label, onDone) {
  for (;;) {
    const j = await api("GET", `jobs/${encodeURIComponent(jobId)}`);
    const p = j.progress || {};
    $("#job").textContent = `${label}: ${j.state}` + (p.total ? ` ${p.done}/${p.total}` : "");
    if (j.state === "done") return onDone(j.result);
    if (j.state === "failed") { toast(`${label} failed: ${j.error}`); return; }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function trainAnnotations() {
  const r = await api("POST", "training/jobs", { kind: "annotations" });
  followJob(r.job_id, "training on annotations", (res) => {
    $("#job").textContent = `training on annotations: done, ${res.steps ?? "?"} steps, loss ${fmt(res.total_loss)}`;
  });
}

async function backtestVisible() {
  if (!state.session) return toast("select a session first: the backtest runs on its symbol");
  const range = chart.timeScale().getVisibleRange();
  if (!range) return toast("the chart has no candles yet");
  const s = state.session;
  const r = await api("POST", "backtests", {
    symbols: [`${baseSymbol(s)}@${s.timeframe}`], since: iso(range.from), until: iso(range.to),
  });
  followJob(r.job_id, "backtest", showBacktest);
}

function showBacktest(res) {
  $("#backtest-panel").hidden = false;
  const rows = [...(res.symbols || [])];
  if (res.portfolio) rows.push({ name: "portfolio", ...res.portfolio });
  $("#backtest-table tbody").replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    const cells = r.error
      ? [r.name, `error: ${r.error}`, "", "", "", "", ""]
      : [r.name, fmt(r.return_pct, 2), fmt(r.pnl, 2), r.trades ?? "–", fmt(r.win_rate, 2), fmt(r.sharpe, 2), fmt(r.max_drawdown, 3)];
    for (const v of cells) { const td = document.createElement("td"); td.textContent = v; tr.append(td); }
    return tr;
  }));
  $("#job").textContent = "backtest: done";
}

// ---- training stats and health --------------------------------------------------------------

async function refreshTraining() {
  const m = await api("GET", "training-metrics");
  const cur = m.current || {}, best = m.best || {};
  fillMetrics($("#train-metrics"), [
    ["loss (current / best)", `${fmt(cur.total_loss)} / ${fmt(best.total_loss)}`],
    ["direction acc (current / best)", `${fmt(cur.candle_accuracy)} / ${fmt(best.candle_accuracy)}`],
    ["action acc (current / best)", `${fmt(cur.action_accuracy)} / ${fmt(best.action_accuracy)}`],
    ["steps", m.steps ?? 0],
    ["trend", m.trend ?? "–"],
    ["last train", m.last_train_time ? new Date(m.last_train_time * 1000).toLocaleTimeString() : "–"],
    ["weights version served", m.served_version ?? m.version ?? "–"],
  ]);
  const hist = (m.history || []).filter((h) => Number.isFinite(h.total_loss));
  // the line series needs strictly increasing "times": use the step number
  lossSeries.setData(hist.map((h) => ({ time: h.step, value: h.total_loss })));
  accSeries.setData(hist.filter((h) => Number.isFinite(h.candle_accuracy)).map((h) => ({ time: h.step, value: h.candle_accuracy })));
}

async function refreshHealth() {
  const el = $("#health");
  try {
    const h = await fetch("health").then((r) => r.json());
    el.textContent = h.status;
    el.className = `pill ${h.status}`;
  } catch (e) {
    el.textContent = "unreachable";
    el.className = "pill degraded";
  }
}

// ---- wiring ---------------------------------------------------------------------------------

function guard(fn) {
  return (...args) => fn(...args).catch((e) => { if (e.status === undefined) toast(String(e)); });
}

$("#token").value = localStorage.getItem("candleray-token") || "";
$("#token").addEventListener("change", () => localStorage.setItem("candleray-token", token()));
for (const b of document.querySelectorAll("button.start")) b.addEventListener("click", guard(() => startSession(b.dataset.mode)));
for (const b of document.querySelectorAll("button.train")) b.addEventListener("click", guard(() => trainManual(b.dataset.action)));
$("#switch-mode").addEventListener("click", guard(switchMode));
$("#stop-session").addEventListener("click", guard(stopSession));
$("#mark-trade").addEventListener("click", startMarking);
$("#train-annotations").addEventListener("click", guard(trainAnnotations));
$("#backtest-visible").addEventListener("click", guard(backtestVisible));

function every(ms, fn) { const run = () => guard(fn)().finally(() => setTimeout(run, ms)); run(); }
every(2000, refreshSessions);
every(1000, refreshChart);
every(2000, refreshTraining);
every(5000, refreshHealth);
