// switchboard dashboard: follows GET /events (Server-Sent Events) and renders once
// per animation frame, whatever the traffic. No framework, no build step.
"use strict";

const HISTORY = 300;   // chart points: five minutes at one snapshot a second
const FEED_MAX = 200;  // presence entries kept
const RETRY_MS = 2000;

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en");
const rate = (x) => (x == null ? "–" : x < 10 ? x.toFixed(1) : fmt.format(Math.round(x)));

// The token lives in this variable only: never in a URL, never in storage.
let token = null;
let latest = null;          // the newest snapshot not yet rendered
let feed = [];              // newest last, at most FEED_MAX
let skipped = 0;
let frame = 0;
const series = [[], [], [], []]; // time, delivered/s, dropped/s, disconnected/s
let chart = null;

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "pill pill-" + kind;
}

function askForToken(why) {
  $("data").hidden = true;
  $("token-form").hidden = false;
  $("token-why").textContent = why;
  $("token-why").className = token ? "error" : "muted";
  status("token required", "down");
  $("token").focus();
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value;
  $("token").value = "";
  $("token-form").hidden = true;
  connect();
});

let controller = null;
let retry = 0;

async function connect() {
  clearTimeout(retry);
  if (controller) controller.abort();
  const mine = controller = new AbortController();
  const headers = { Accept: "text/event-stream" };
  if (token) headers.Authorization = "Bearer " + token;
  status("connecting…", "wait");
  let res;
  try {
    // Relative, so the page works wherever the admin router is mounted.
    res = await fetch("events", { headers, cache: "no-store", signal: controller.signal });
  } catch (err) {
    if (mine === controller) again("offline");
    return;
  }
  if (res.status === 401) {
    askForToken(token ? "That token was refused. Try again." :
      "This admin API needs a bearer token. It is kept in this tab's memory only and sent as an Authorization header.");
    return;
  }
  if (!res.ok || !res.body) return again("error " + res.status);
  status("live", "live");
  $("data").hidden = false;
  if (!chart) makeChart();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        onBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
      // One snapshot is a few kilobytes; anything this large is not ours.
      if (buffer.length > 4 << 20) break;
    }
  } catch (err) { /* aborted or dropped: retry below */ }
  // A stream that a newer connect() replaced retries nothing.
  if (mine === controller) again("disconnected");
}

function again(why) {
  status(why + ", retrying", "down");
  retry = setTimeout(connect, RETRY_MS);
}

// One Server-Sent Events block: `event:` and `data:` lines.
function onBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (event !== "snapshot" || data.length === 0) return;
  let snap;
  try { snap = JSON.parse(data.join("\n")); } catch (err) { return; }
  absorb(snap);
}

// Folds a snapshot into the page's state now; draws on the next frame.
function absorb(snap) {
  latest = snap;
  const r = snap.rates;
  if (r) {
    series[0].push(snap.t / 1000);
    series[1].push(r.delivered);
    series[2].push(r.dropped);
    series[3].push(r.disconnected);
    if (series[0].length > HISTORY) series.forEach((s) => s.splice(0, s.length - HISTORY));
  }
  const at = new Date(snap.t);
  for (const e of snap.events) feed.push({ at, e });
  // Cluster events share the feed; a kind whose name clashes gets its own.
  const c = snap.cluster;
  if (c && Array.isArray(c.events)) {
    for (const e of c.events) feed.push({ at, e: e.event === "taken_over" ? { ...e, event: "node_taken_over" } : e });
    skipped += c.skipped_events || 0;
  }
  if (feed.length > FEED_MAX) feed = feed.slice(-FEED_MAX);
  skipped += snap.skipped_events;
  if (!frame) frame = requestAnimationFrame(render);
}

function makeChart() {
  const el = $("chart");
  chart = new uPlot({
    width: Math.max(300, el.clientWidth),
    height: 220,
    series: [
      {},
      { label: "deliveries/s", stroke: "#4ea1ff", fill: "rgba(78,161,255,0.12)", width: 2, scale: "msg", value: (u, v) => rate(v) },
      { label: "drops/s", stroke: "#f0b429", width: 2, scale: "bad", value: (u, v) => rate(v) },
      { label: "disconnects/s", stroke: "#ff6b6b", width: 2, scale: "bad", value: (u, v) => rate(v) },
    ],
    // The last five minutes once there are five; at least one minute before that.
    scales: { x: { time: true, range: (u, min, max) => [Math.min(Math.max(min, max - HISTORY), max - 60), max] }, msg: { range: (u, min, max) => [0, Math.max(1, max)] }, bad: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [
      { stroke: "#8696a7", grid: { stroke: "#26313d" }, ticks: { stroke: "#26313d" }, space: 80,
        values: (u, splits) => splits.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })) },
      { scale: "msg", stroke: "#8696a7", grid: { stroke: "#26313d" }, ticks: { stroke: "#26313d" }, size: 60 },
      { scale: "bad", side: 1, stroke: "#8696a7", grid: { show: false }, size: 50 },
    ],
    legend: { live: false },
  }, series, el);
  window.addEventListener("resize", () => chart.setSize({ width: Math.max(300, el.clientWidth), height: 220 }));
}

function text(id, value) {
  const el = $(id);
  const s = String(value);
  if (el.textContent !== s) el.textContent = s;
}

// `numeric` columns (by index) align right; by default the last, the count.
function rows(tbody, items, cells, numeric) {
  const out = document.createDocumentFragment();
  for (const item of items) {
    const tr = document.createElement("tr");
    const values = cells(item);
    values.forEach((value, i) => {
      const td = document.createElement("td");
      td.textContent = value;
      if (numeric ? numeric.includes(i) : i === values.length - 1) td.className = "num";
      tr.appendChild(td);
    });
    out.appendChild(tr);
  }
  tbody.replaceChildren(out);
}

const LABEL = {
  joined: "joined", left: "left", taken_over: "taken over", task_cancelled: "task cancelled",
  node_down: "node down", node_taken_over: "moved node", reconnected: "redis back",
};

function describe(e) {
  switch (e.event) {
    case "joined":
    case "left": return (e.key ?? "(no key)") + " · " + e.id;
    case "taken_over": return e.key + " · " + e.old + " → " + e.new;
    case "task_cancelled": return "task " + e.task + " · " + String(e.reason).replace(/_/g, " ");
    case "node_down": {
      const keys = Array.isArray(e.keys) ? e.keys : [];
      const more = e.more_keys > 0 ? " and " + fmt.format(e.more_keys) + " more" : "";
      return "node " + e.node + (keys.length ? " · released " + keys.join(", ") + more : " · held no keys");
    }
    case "node_taken_over": return e.key + " · now on node " + e.node;
    case "reconnected": return "subscriptions and presence renewed";
    default: return JSON.stringify(e);
  }
}

function render() {
  frame = 0;
  const s = latest;
  if (!s) return;
  text("clients-total", fmt.format(s.clients));
  text("clients-devices", fmt.format(s.devices));
  text("clients-orchestrators", fmt.format(s.orchestrators));
  text("clients-other", fmt.format(s.other));
  text("sessions", fmt.format(s.sessions));
  text("tasks", fmt.format(s.tasks));
  text("rate-delivered", rate(s.rates?.delivered));
  text("rate-dropped", rate(s.rates?.dropped));
  text("rate-disconnected", rate(s.rates?.disconnected));
  text("total-delivered", fmt.format(s.totals.delivered));
  text("total-dropped", fmt.format(s.totals.dropped));
  text("total-disconnected", fmt.format(s.totals.disconnected));
  text("updated", "updated " + new Date(s.t).toLocaleTimeString());

  const platforms = s.by_platform.map(([p, n]) => [p, fmt.format(n)]);
  if (s.other_platforms > 0) platforms.push(["(other platforms)", fmt.format(s.other_platforms)]);
  if (platforms.length === 0) platforms.push(["(none reported)", "–"]);
  const same = (x) => x;
  rows($("platforms"), platforms, same);
  const sessions = s.top_sessions.map((t) => [String(t.id), fmt.format(t.members)]);
  if (sessions.length === 0) sessions.push(["(no sessions)", "–"]);
  rows($("top-sessions"), sessions, same);

  const list = document.createDocumentFragment();
  for (let i = feed.length - 1; i >= 0; i--) {
    const { at, e } = feed[i];
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = at.toLocaleTimeString();
    const tag = document.createElement("span");
    tag.className = "ev ev-" + e.event;
    tag.textContent = LABEL[e.event] ?? e.event;
    const what = document.createElement("span");
    what.textContent = describe(e);
    li.append(time, tag, what);
    list.appendChild(li);
  }
  $("feed").replaceChildren(list);
  text("feed-note", skipped > 0 ? "(last " + FEED_MAX + "; " + fmt.format(skipped) + " skipped)" : "(last " + FEED_MAX + ")");

  renderCluster(s.cluster);

  if (chart) chart.setData(series);
}

// Milliseconds as "0.4 s ago".
const age = (ms) => (ms == null ? "–" : (ms / 1000).toFixed(1) + " s ago");
const count = (n) => (n == null ? "–" : fmt.format(n));

// The cluster section: shown only when the snapshot has a cluster.
function renderCluster(c) {
  $("cluster").hidden = !c;
  if (!c) return;
  text("cluster-node", c.node ?? "?");
  text("cluster-subscriptions", count(c.subscriptions));
  text("cluster-gaps", count(c.gaps));
  const err = $("cluster-error");
  err.hidden = !c.redis_error;
  if (c.redis_error) text("cluster-error", "Redis: " + c.redis_error + " (nodes unknown until it answers)");
  const live = Array.isArray(c.nodes);
  const nodes = live ? c.nodes.slice(0, 100) : [];
  const total = nodes.length + (c.more_nodes || 0);
  text("cluster-note", live ? "(" + fmt.format(total) + " live" + (total > nodes.length ? ", first " + nodes.length + " shown" : "") + ")" : "");
  rows($("nodes"), nodes, (n) => [
    String(n.id ?? "?") + (n.id === c.node ? " (this node)" : ""),
    String(n.state ?? "?"),
    age(n.heartbeat_age_ms),
    count(n.subscriptions),
    count(n.gaps),
    count(n.clients),
  ], [2, 3, 4, 5]);
  for (const tr of $("nodes").children) tr.children[1].className = "state-" + tr.children[1].textContent;
}

connect();
