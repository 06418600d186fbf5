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
  modePicked: false,   // the user chose a mode in the list and has not clicked Switch yet
  training: null,      // the last GET /training-metrics answer
  sessions: [],        // the last GET /sessions answer
};

// ---- API ------------------------------------------------------------------------------------

function token() { return $("#token").value.trim(); }

// quiet: the caller reports the error itself (the refresh loops do, once per new error)
async function api(method, path, body, { quiet = false } = {}) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && token()) headers["Authorization"] = `Bearer ${token()}`;
  const reply = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await reply.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!reply.ok) {
    const msg = explain(data) || `${reply.status} ${reply.statusText}`;
    if (!quiet) toast(`${method} ${path}: ${msg}`);
    const err = new Error(`${method} ${path}: ${msg}`);
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
    // the note, cut short on the chart (whole in the annotations table)
    const note = a.note ? `: ${a.note.length > 24 ? `${a.note.slice(0, 23)}…` : a.note}` : "";
    m.push({ time: a.entry, position: "belowBar", color: "#ff80ab", shape: a.side === "long" ? "arrowUp" : "arrowDown", text: `A ${a.side}${note}` });
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
  const list = await api("GET", "sessions", undefined, { quiet: true });
  state.sessions = list;
  const tbody = $("#sessions tbody");
  tbody.replaceChildren(...list.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.id = s.id;
    if (state.session && state.session.id === s.id) tr.classList.add("selected");
    const m = s.metrics || {};
    const cells = [[s.id, "id"], [s.mode, ""], [m.candles ?? 0, "num"], [fmt(m.direction_acc), "num"],
      [fmt(m.paper_pnl, 2), "num"], [s.state || "", ""]];
    for (const [v, cls] of cells) {
      const td = document.createElement("td"); td.textContent = v; if (cls) td.className = cls; tr.append(td);
    }
    tr.addEventListener("click", () => select(s));
    return tr;
  }));
  showHeldOut();
  if (state.session) {
    const cur = list.find((s) => s.id === state.session.id);
    if (cur) showSession(cur);
    else sessionGone(state.session.id, "GET /sessions no longer lists it (stopped in another tab or the CLI, or its host restarted without it)");
  }
}

// The selected session went away elsewhere: close its panel and stop polling its chart, with
// one message (a 404 toast every second would hide everything else on the page).
function sessionGone(id, why) {
  if (!state.session || state.session.id !== id) return;
  state.session = null;
  state.modePicked = false;
  $("#session-panel").hidden = true;
  $("#annotations-panel").hidden = true;
  $("#chart-title").textContent = `No session selected (${id} was stopped)`;
  clearChart();
  for (const tr of document.querySelectorAll("#sessions tbody tr")) tr.classList.remove("selected");
  toast(`session ${id} is no longer running: ${why}. Its panel was closed; pick or start another session.`);
}

function select(s) {
  const changed = !state.session || state.session.id !== s.id;
  state.session = s;
  if (changed) {
    state.modePicked = false;
    clearChart();
    loadAnnotations();
  }
  $("#session-panel").hidden = false;
  $("#sel-id").textContent = s.id;
  $("#chart-title").textContent = `${s.symbol} — ${s.mode}`;
  for (const tr of document.querySelectorAll("#sessions tbody tr")) tr.classList.toggle("selected", tr.dataset.id === s.id);
  showSession(s);
  refreshChart();
}

function clearChart() {
  state.lastTime = null;
  for (const k of ["candles", "ghosts", "pivots", "signals"]) state[k] = new Map();
  state.trades = [];
  state.annotations = [];
  state.userMoved = false;
  candleSeries.setData([]);
  ghostSeries.setData([]);
  markers.setMarkers([]);
}

function showSession(s) {
  state.session = s;
  // the refresh shows the running mode, but never overrides a choice not yet switched to
  const sel = $("#mode-select");
  if (!state.modePicked) sel.value = s.mode;
  $("#mode-note").textContent = sel.value === s.mode ? "" : `running ${s.mode}: Switch to apply ${sel.value}`;
  const manual = s.mode === "manual";
  $("#manual-row").hidden = !manual;
  $("#manual-off").hidden = manual;
  $("#chart-title").textContent = `${s.symbol} — ${s.mode}`;
  const m = s.metrics || {};
  fillMetrics($("#session-metrics"), [
    ["state", s.state ?? "–"],
    ["candles", m.candles ?? 0],
    ["predictions", m.predictions ?? 0],
    ["settled", m.settled ?? 0],
    ["direction accuracy (held out, all settled)", fmt(m.direction_acc)],
    [`direction accuracy (last ${m.rolling_n ?? 0} settled)`, fmt(m.direction_acc_rolling)],
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
  let c;
  try {
    c = await api("GET", `sessions/${encodeURIComponent(s.id)}/chart${q}`, undefined, { quiet: true });
  } catch (e) {
    if (e.status === 404) return sessionGone(s.id, "its chart answered 404 (no running session by that id)");
    throw e;
  }
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
  state.modePicked = false;
  showSession(s);
  refreshSessions();
}

async function stopSession() {
  if (!state.session) return;
  await api("DELETE", `sessions/${encodeURIComponent(state.session.id)}`);
  state.session = null;
  state.modePicked = false;
  $("#session-panel").hidden = true;
  $("#annotations-panel").hidden = true;
  $("#chart-title").textContent = "No session selected";
  clearChart();
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
  if (!state.session || state.session.id !== s.id) return;
  state.annotations = list.map((a) => ({
    entry: Date.parse(a.entry_time) / 1000, exit: Date.parse(a.exit_time) / 1000, side: a.side, id: a.id,
    note: a.note || "", entryPrice: a.entry_price, exitPrice: a.exit_price,
  }));
  redrawMarkers();
  $("#annotations-panel").hidden = state.annotations.length === 0;
  $("#annotations-table tbody").replaceChildren(...state.annotations.map((a) => {
    const tr = document.createElement("tr");
    for (const v of [a.side, `${iso(a.entry)} @ ${fmt(a.entryPrice, 5)}`, `${iso(a.exit)} @ ${fmt(a.exitPrice, 5)}`, a.note || "–"]) {
      const td = document.createElement("td"); td.textContent = v; tr.append(td);
    }
    tr.lastChild.className = "note-cell";
    return tr;
  }));
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
  const from = Number(range.from), to = Number(range.to);
  followJob(r.job_id, "backtest", (res) => showBacktest(res, liveInRange(from, to)));
}

// What the live session did on the backtest's candles: its paper trades are its own signals,
// each made when its candle closed by the weights of that moment.
function liveInRange(from, to) {
  const inRange = (t) => t >= from && t <= to;
  const signals = [...state.signals.values()].filter((x) => inRange(x.time));
  const versions = [...state.ghosts.values()].filter((g) => inRange(g.time) && g.version !== null && g.version !== undefined).map((g) => g.version);
  const traded = signals.map((x) => x.time).sort((a, b) => a - b);
  return {
    trades: state.trades.filter((t) => inRange(t.entry_time) && t.exit_time && inRange(t.exit_time)).length,
    buy: signals.filter((x) => x.action === "BUY").length,
    sell: signals.filter((x) => x.action === "SELL").length,
    bars: [...state.candles.keys()].filter(inRange).length,
    firstSignal: traded.length ? traded[0] : null,
    vmin: versions.length ? Math.min(...versions) : null,
    vmax: versions.length ? Math.max(...versions) : null,
  };
}

function showBacktest(res, live) {
  $("#backtest-panel").hidden = false;
  const rows = [...(res.symbols || [])];
  if (res.portfolio) rows.push({ name: "portfolio", ...res.portfolio });
  $("#backtest-table tbody").replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    const cells = r.error
      ? [r.name, `error: ${r.error}`, "", "", "", "", "", ""]
      : [r.name, fmt(r.return_pct, 2), fmt(r.pnl, 2), r.trades ?? "–", fmt(r.win_rate, 2), fmt(r.sharpe, 2), fmt(r.max_drawdown, 3), fmt(r.direction_acc)];
    for (const v of cells) { const td = document.createElement("td"); td.textContent = v; tr.append(td); }
    return tr;
  }));
  const row = (res.symbols || []).find((r) => !r.error);
  $("#backtest-vs-live").replaceChildren(...(row ? explainBacktest(row, res.weights || {}, live) : []));
  $("#job").textContent = "backtest: done";
}

// Why a backtest of the visible range and the live session's paper trades on the same candles
// differ. Both trade with the simulator's rules (pipelines/live/paper.py follows them trade for
// trade); what differs is the signals: the weights that made them, and the bars that have one.
function explainBacktest(row, w, live) {
  const versions = live.vmin === null ? "no prediction in the range"
    : live.vmin === live.vmax ? `weights v${live.vmin}` : `weights v${live.vmin}…v${live.vmax}, as the model trained`;
  const warm = Math.max(0, (row.bars ?? 0) - (row.windows ?? 0));
  const sameWeights = live.vmin !== null && live.vmin === live.vmax && live.vmin === w.step;
  const p = (text) => { const el = document.createElement("p"); el.textContent = text; return el; };
  return [
    p(`Live on these candles: ${live.trades} paper trade(s) from the session's own ${live.buy} BUY / ${live.sell} SELL signals, ` +
      `each made when its candle closed by the weights of that moment (${versions}); ` +
      `its first signal came at ${live.firstSignal === null ? "–" : iso(live.firstSignal)} (earlier candles only filled its window).`),
    p(`Backtest: ${row.trades ?? "–"} trade(s) from ${row.signals_buy ?? "–"} BUY / ${row.signals_sell ?? "–"} SELL signals, every bar predicted again ` +
      `by one version, the weights as they are now (${w.source ?? "?"} ${w.version ?? "?"}, step ${w.step ?? "?"}); ` +
      `its first ${warm} bar(s) give no signal (the model's window needs them).`),
    p(sameWeights
      ? "Same weights: the remaining difference is the bars each could trade (the warm-up above, and a position the session already held when the range began)."
      : "Why they differ: both follow the same trading rules, but the signals come from different weights (and start on different bars). " +
        "With the same weights and candles they make the same trades; the backtest shows what the current model would have done, the paper trades what the session did."),
  ];
}

// ---- training stats and health --------------------------------------------------------------

// Per-sample mean of steps h[i-n+1..i] for every i: the rolling mean the ModelActor reports
// as "recent" (pipelines.model.trainer.mean_metrics), so the curve's last point is that figure.
// A step weighs by its samples (direction accuracy: by the samples whose next close moved), so a
// 1-sample step of live training counts as one sample, not as much as a batch of 64.
function rollingMean(hist, key, wkey, n) {
  const out = [];
  for (let i = 0; i < hist.length; i++) {
    let sum = 0, wsum = 0;
    for (const h of hist.slice(Math.max(0, i - n + 1), i + 1)) {
      const v = h[key], w = h[wkey] ?? h.samples ?? 1;
      if (Number.isFinite(v) && w > 0) { sum += v * w; wsum += w; }
    }
    if (wsum > 0 && i + 1 >= Math.min(n, 10)) out.push({ time: hist[i].step, value: sum / wsum });
  }
  return out;
}

async function refreshTraining() {
  const m = await api("GET", "training-metrics", undefined, { quiet: true });
  state.training = m;
  const recent = m.recent || {}, best = m.best || {}, cur = m.current || {};
  const n = m.recent_steps ?? 0;
  for (const el of document.querySelectorAll(".recent-n")) el.textContent = String(n);
  $("#train-none").hidden = n > 0;
  $("#train-table").hidden = n === 0;
  const rows = [
    ["loss", "total_loss"], ["direction accuracy", "candle_accuracy"], ["action accuracy", "action_accuracy"],
  ];
  $("#train-table tbody").replaceChildren(...rows.map(([label, key]) => {
    const tr = document.createElement("tr");
    tr.dataset.key = key;
    const th = document.createElement("th"); th.textContent = label; tr.append(th);
    for (const [v, col] of [[recent[key], "recent"], [best[key], "best"], [cur[key], "last"]]) {
      const td = document.createElement("td"); td.className = "num"; td.dataset.col = col; td.textContent = fmt(v); tr.append(td);
    }
    return tr;
  }));
  fillMetrics($("#train-metrics"), [
    ["steps", m.steps ?? 0],
    ["samples in the last step", cur.samples ?? "–"],
    ["best mean reached at step", m.best_step || "–"],
    ["loss trend", m.trend ?? "–"],
    ["last train", m.last_train_time ? new Date(m.last_train_time * 1000).toLocaleTimeString() : "–"],
    ["weights version served", m.served_version ?? m.version ?? "–"],
  ]);
  const hist = m.history || [];
  // the line series needs strictly increasing "times": use the step number
  lossSeries.setData(rollingMean(hist, "total_loss", "samples", n));
  accSeries.setData(rollingMean(hist, "candle_accuracy", "direction_samples", n));
}

// Live predictions settled against the candle that came: the honest, out-of-sample figures.
function showHeldOut() {
  let hits = 0, dirs = 0, settled = 0;
  for (const s of state.sessions) {
    const m = s.metrics || {};
    settled += m.settled ?? 0;
    if (Number.isFinite(m.direction_acc) && m.directions) { hits += m.direction_acc * m.directions; dirs += m.directions; }
  }
  fillMetrics($("#heldout-metrics"), [
    ["live direction accuracy, all sessions", dirs ? fmt(hits / dirs) : "–"],
    ["settled / scored for direction (next close moved)", `${settled} / ${dirs}`],
    ["a coin toss would score", "0.500"],
  ]);
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
$("#mode-select").addEventListener("change", () => {
  state.modePicked = !!state.session && $("#mode-select").value !== state.session.mode;
  if (state.session) showSession(state.session);
});
$("#stop-session").addEventListener("click", guard(stopSession));
$("#mark-trade").addEventListener("click", startMarking);
$("#train-annotations").addEventListener("click", guard(trainAnnotations));
$("#backtest-visible").addEventListener("click", guard(backtestVisible));

// A refresh loop reports an error once, when it starts or its message changes, and says so
// takes its message down when it recovers: a failing poll must not raise a toast every second.
function every(ms, fn) {
  let failing = null;
  const run = () => fn()
    .then(() => {
      if (failing === null) return;
      if ($("#toast").textContent === failing) $("#toast").hidden = true;  // only its own message
      failing = null;
    })
    .catch((e) => { const msg = String(e.message || e); if (msg !== failing) { failing = msg; toast(msg); } })
    .finally(() => setTimeout(run, ms));
  run();
}
every(2000, refreshSessions);
every(1000, refreshChart);
every(2000, refreshTraining);
every(5000, refreshHealth);
