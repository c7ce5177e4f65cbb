// The status page: this node's figures, received over tidings itself from the
// channel the server publishes them into every second (see docs/metrics.md).

import { Tidings } from "./tidings.js";

const POINTS = 60; // a minute of history per chart
const params = new URLSearchParams(location.search);
const base = new URL(".", location.href);
const meta = (name) => document.querySelector(`meta[name="tidings-${name}"]`).content;
const channel = meta("status-channel");
// Demo tokens exist only on a node started with --demo: no request for one elsewhere.
const mintsTokens = meta("demo") === "on";
// Uptime: the server's figure when the page was served, plus the page's own clock since
// (no comparison of the two machines' clocks).
const uptimeAtLoadS = Number(meta("uptime-s")) || 0;
const FORCED = { ws: ["ws"], sse: ["sse"], longpoll: ["longpoll"], poll: ["poll"] };

const figures = {
  ws: (s) => s.connections.ws,
  sse: (s) => s.connections.sse,
  poll: (s) => s.connections.poll,
  channels: (s) => s.channels,
  publications: (s) => s.publications_per_s,
  deliveries: (s) => s.deliveries_per_s,
};
const series = Object.fromEntries(Object.keys(figures).map((name) => [name, []]));

async function token() {
  if (params.get("token")) return params.get("token");
  // A node started with --demo (and no jwt_secret) mints tokens; any other node that
  // requires tokens needs ?token= in this page's address.
  if (!mintsTokens) return null;
  const response = await fetch(new URL("demo/token", base), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "status-page" }),
  });
  return response.ok ? (await response.json()).token : null;
}

function niceMax(value) {
  // The y scale's top: 1, 2 or 5 times a power of ten, at least the highest value.
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((top) => top >= value);
}

function draw(card, values) {
  const max = niceMax(Math.max(...values));
  card.querySelector(".y-max").textContent = String(max);
  const points = values.map((value, i) => `${POINTS - values.length + i},${1 - value / max}`);
  card.querySelector("polyline").setAttribute("points", points.join(" "));
}

function show(status) {
  for (const [name, read] of Object.entries(figures)) {
    const value = Number(read(status)) || 0;
    const values = series[name];
    values.push(value);
    if (values.length > POINTS) values.shift();
    const card = document.getElementById(name);
    card.querySelector(".value").textContent = String(value);
    draw(card, values);
  }
  document.getElementById("publications-total").textContent = String(status.publications);
  document.getElementById("deliveries-total").textContent = String(status.deliveries);
  showHotChannels(status.hot_channels ?? []);
}

function showHotChannels(hot) {
  // Rates are null for a figure the node's bounded counter did not keep (docs/scaling.md).
  const rate = (value) => (value === null ? "small" : String(value));
  const rows = hot.map((entry) => {
    const row = document.createElement("tr");
    for (const text of [entry.channel, rate(entry.deliveries_per_s), rate(entry.publications_per_s)]) {
      const cell = document.createElement("td");
      cell.textContent = text; // channel names are the clients' text: never markup
      row.append(cell);
    }
    return row;
  });
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 3;
    cell.textContent = "none yet (rates appear when a counting window closes)";
    row.append(cell);
    rows.push(row);
  }
  document.querySelector("#hot-channels tbody").replaceChildren(...rows);
}

function showUptime() {
  let s = uptimeAtLoadS + Math.floor(performance.now() / 1000);
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)} ${unit}`);
      s %= size;
    }
  }
  parts.push(`${s} s`);
  document.getElementById("uptime").textContent = parts.slice(0, 2).join(" ");
}

showUptime();
setInterval(showUptime, 1000);
document.getElementById("channel").textContent = channel;
const client = new Tidings(base, {
  transports: FORCED[params.get("transport")] ?? ["ws", "sse", "longpoll"],
  token,
  backoff: { baseMs: 200, capMs: 3000 },
});
client.on("state", ({ state, transport }) => {
  const badge = document.getElementById("state");
  badge.textContent = state;
  badge.dataset.state = state;
  document.getElementById("transport").textContent = transport ?? "–";
});
client.on("publication", (publication) => show(publication.data));
client.on("error", (error) => {
  const unauthorized = error.code === "unauthorized" || error.closeCode === 4001;
  document.getElementById("error").textContent = unauthorized
    ? "This node requires a token: open /status?token=<a token that may subscribe to " +
      `${channel}> (docs/metrics.md).`
    : `${error.code}: ${error.message}`;
});
client.subscribe(channel);
client.connect();
