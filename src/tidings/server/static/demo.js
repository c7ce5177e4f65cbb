// The chat demo: plain DOM and the tidings client. Demo only (see docs/demo.md).
//
// Rooms are channels `room:<name>` (client publishing and presence on, for the demo);
// each user also has `user:<name>`, a channel only its owner may subscribe to, which
// receives notifications. A page on WebSocket publishes, reads presence and history
// itself; on SSE or polling, which only receive, it asks the demo backend (/demo/*).
// On the PostgreSQL broker every message is sent to the backend, which saves it as a
// row of a table; a table source publishes the row (GET /demo/about says which).

import { Tidings } from "./tidings.js";

const params = new URLSearchParams(location.search);
const base = new URL(".", location.href); // the server's root, whatever the mount path
const FORCED = { ws: ["ws"], sse: ["sse"], longpoll: ["longpoll"], poll: ["poll"] };
const DEFAULT_ROOMS = ["lobby", "random"];
const PRESENCE_REFRESH_MS = 3000;

const $ = (selector) => document.querySelector(selector);
const ui = {
  login: $("#login"),
  name: $("#name"),
  loginError: $("#login-error"),
  chat: $("#chat"),
  transport: $("#transport"),
  state: $("#state"),
  me: $("#me"),
  rooms: $("#rooms"),
  roomForm: $("#room-form"),
  roomName: $("#room-name"),
  roomTitle: $("#room-title"),
  notice: $("#notice"),
  messages: $("#messages"),
  send: $("#send"),
  sendButton: $("#send-button"),
  text: $("#text"),
  linkStatus: $("#link-status"),
  empty: $("#empty"),
  sendError: $("#send-error"),
  online: $("#online"),
  onlineCount: $("#online-count"),
  notifications: $("#notifications"),
};

let user = null;
let token = params.get("token");
let client = null;
let room = null; // the channel shown, room:<name>
let savedAsRows = false; // messages go to the backend's table (PostgreSQL), on any transport
let online = new Map(); // client id -> user, of the room shown
const rooms = new Set(DEFAULT_ROOMS);

// -- the demo backend (for what SSE and polling cannot do, and tokens) -------------

async function newToken() {
  if (params.get("token")) return params.get("token"); // given by the application
  const response = await fetch(new URL("demo/token", base), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: user }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error?.message ?? `HTTP ${response.status}`);
  token = body.token;
  return token;
}

async function backend(path, { method = "GET", query = {}, body = undefined } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const url = new URL(path, base);
    for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
    const response = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json();
    if (response.ok) return answer;
    if (response.status === 401 && attempt === 0) {
      await newToken(); // the server restarted with a new demo secret, or it expired
      continue;
    }
    throw new Error(answer.error?.message ?? `HTTP ${response.status}`);
  }
}

function key() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const onWebSocket = () => client.transport === "ws" && client.state === "connected";

// -- rendering -----------------------------------------------------------------------

// What the room says about the link while it is not up, by the client's state.
const LINK_TEXT = {
  idle: "Connecting…",
  connecting: "Connecting…",
  disconnected: "Reconnecting…",
  failed: "Disconnected: the server ended the session. Reload the page to try again.",
  closed: "Disconnected.",
};
let everConnected = false;

function showLink({ state, transport }) {
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  ui.transport.textContent = transport ?? "–";
  ui.transport.dataset.transport = transport ?? "";
  const up = state === "connected";
  if (up) everConnected = true;
  // Once connected, any later "connecting" is a reconnection too.
  const text = state === "connecting" && everConnected ? "Reconnecting…" : LINK_TEXT[state];
  ui.linkStatus.textContent = up ? "" : text;
  ui.linkStatus.hidden = up;
  ui.linkStatus.dataset.state = state;
  // A message typed while the link is down would be lost or sent late: Send waits.
  ui.sendButton.disabled = !up;
  // Who is online is unknown while away: the list stays, marked as possibly stale.
  ui.online.classList.toggle("stale", !up);
  ui.online.dataset.stale = String(!up);
  if (up) refreshPresence();
}

function showEmpty() {
  const empty = ui.messages.children.length === 0;
  ui.empty.textContent = empty ? `No messages in ${ui.roomTitle.textContent} yet. Say hello!` : "";
  ui.empty.hidden = !empty;
}

function renderMessage(publication) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.position = `${publication.epoch}:${publication.offset}`;
  const data = publication.data ?? {};
  // A row published by the table source carries its author in its data.
  const author = publication.info?.user || data.author || data.user || "server";
  // One's own messages (published with this page's token) look different.
  item.classList.toggle("own", author === user);
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = author;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = typeof data.text === "string" ? data.text : JSON.stringify(data);
  const time = document.createElement("time");
  time.dateTime = new Date(publication.ts).toISOString();
  time.textContent = new Date(publication.ts).toLocaleTimeString();
  item.append(who, text, time);
  const atBottom =
    ui.messages.scrollTop + ui.messages.clientHeight >= ui.messages.scrollHeight - 4;
  ui.messages.append(item);
  if (atBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
  showEmpty();
}

function renderRooms() {
  ui.rooms.replaceChildren(
    ...[...rooms].map((name) => {
      const item = document.createElement("li");
      item.classList.toggle("current", room === `room:${name}`);
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `#${name}`;
      button.addEventListener("click", () => enterRoom(name).catch(showError));
      item.append(button);
      return item;
    }),
  );
}

function renderOnline() {
  const users = [...new Set(online.values())].sort();
  ui.online.replaceChildren(
    ...users.map((name) => {
      const item = document.createElement("li");
      item.dataset.user = name;
      item.textContent = name === user ? `${name} (you)` : name;
      return item;
    }),
  );
  ui.onlineCount.textContent = `(${users.length})`;
}

function notify(publication) {
  const { from, data } = publication.data ?? {};
  const item = document.createElement("li");
  item.className = "notification";
  item.textContent = `@${from} in #${data?.room ?? "?"}: ${data?.text ?? ""}`;
  ui.notifications.prepend(item);
}

function showError(error) {
  ui.sendError.textContent = error.message;
}

function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

// -- rooms -----------------------------------------------------------------------------

async function enterRoom(name, notice = "") {
  if (room) client.unsubscribe(room);
  showNotice(notice);
  room = `room:${name}`;
  rooms.add(name);
  online = new Map();
  renderRooms();
  renderOnline();
  ui.roomTitle.textContent = `#${name}`;
  ui.messages.replaceChildren();
  ui.empty.hidden = true; // until the history says whether the room is empty
  const url = new URL(location.href);
  url.searchParams.set("room", name);
  history.replaceState(null, "", url);
  // The latest messages, then everything after them, live: nothing lost in between.
  const shown = room;
  const read = await backend("demo/history", { query: { channel: room, limit: "50" } });
  if (room !== shown) return; // another room was chosen meanwhile
  for (const publication of read.publications) renderMessage(publication);
  showEmpty();
  client.subscribe(room, { since: { epoch: read.epoch, offset: read.offset } });
}

async function refreshPresence() {
  if (!room) return;
  const shown = room;
  try {
    const clients = onWebSocket()
      ? await client.presence(room)
      : (await backend("demo/presence", { query: { channel: room } })).clients;
    if (room !== shown) return;
    online = new Map(Object.entries(clients).map(([id, info]) => [id, info.user]));
    renderOnline();
  } catch {
    // the next refresh or join/leave corrects it
  }
}

async function send(text) {
  const data = { text };
  const channel = room;
  const publicationKey = key(); // a retry with the same key is not published twice
  if (onWebSocket() && !savedAsRows) {
    try {
      await client.publish(channel, data, { key: publicationKey });
    } catch (error) {
      if (!["disconnected", "unsupported", "timeout"].includes(error.code)) throw error;
      await backend("demo/publish", { method: "POST", body: { channel, data, key: publicationKey } });
    }
  } else {
    await backend("demo/publish", { method: "POST", body: { channel, data, key: publicationKey } });
  }
  const mentioned = new Set([...text.matchAll(/@([A-Za-z0-9_-]{1,32})/g)].map((m) => m[1]));
  for (const to of mentioned) {
    await backend("demo/notify", {
      method: "POST",
      body: { to, data: { room: channel.slice("room:".length), text } },
    });
  }
}

// -- start -----------------------------------------------------------------------------

async function start(name) {
  user = name;
  await newToken();
  const about = await fetch(new URL("demo/about", base));
  savedAsRows = about.ok && (await about.json()).messages === "table";
  ui.login.hidden = true;
  ui.chat.hidden = false;
  ui.me.textContent = `as ${user}`;
  const forced = FORCED[params.get("transport")];
  client = new Tidings(base, {
    transports: forced ?? ["ws", "sse", "longpoll"],
    // The first token was fetched above; a new one when the client asks to refresh.
    token: ({ refresh }) => (refresh || !token ? newToken() : token),
    backoff: { baseMs: 200, capMs: 3000 },
  });
  window.tidingsDemo = { client }; // for a look from the console
  client.on("state", showLink);
  client.on("publication", (publication) => {
    if (publication.channel === room) renderMessage(publication);
    else if (publication.channel === `user:${user}`) notify(publication);
  });
  client.on("gap", ({ channel }) => {
    if (channel !== room) return;
    const notice = "Some messages could not be recovered; the room was reloaded.";
    enterRoom(room.slice("room:".length), notice).catch(showError);
  });
  client.on("subscribed", ({ channel }) => {
    if (channel === room) refreshPresence();
  });
  for (const kind of ["join", "leave"]) {
    client.on(kind, ({ channel, client: id, user: who }) => {
      if (channel !== room) return;
      if (kind === "join") online.set(id, who);
      else online.delete(id);
      renderOnline();
    });
  }
  client.on("error", showError);
  client.subscribe(`user:${user}`);
  client.connect();
  setInterval(() => {
    if (!onWebSocket()) refreshPresence(); // SSE and polling get no join/leave pushes
  }, PRESENCE_REFRESH_MS);
  await enterRoom(params.get("room") ?? DEFAULT_ROOMS[0]);
}

ui.login.addEventListener("submit", async (event) => {
  event.preventDefault();
  ui.loginError.textContent = "";
  try {
    await start(ui.name.value.trim());
  } catch (error) {
    ui.login.hidden = false;
    ui.chat.hidden = true;
    ui.loginError.textContent = error.message;
  }
});

ui.roomForm.addEventListener("submit", (event) => {
  event.preventDefault();
  enterRoom(ui.roomName.value.trim()).catch(showError);
  ui.roomName.value = "";
});

ui.send.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text || ui.sendButton.disabled) return;
  ui.sendError.textContent = "";
  ui.text.value = "";
  try {
    await send(text);
  } catch (error) {
    ui.text.value = text;
    ui.sendError.textContent = `Not sent: ${error.message}`;
  }
});

if (params.get("name")) {
  ui.name.value = params.get("name");
  ui.login.requestSubmit();
}
