// A fake tidings server for the client's tests: channels with offsets and epochs,
// the three transports (a WebSocket class and a fetch function to hand to the
// client), and knobs to make it fail. Not a test file itself; tidings.test.js uses it.

const encoder = new TextEncoder();

function jsonResponse(body, status = 200) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

function parseSince(text) {
  const at = text.lastIndexOf(":");
  return { epoch: text.slice(0, at), offset: Number(text.slice(at + 1)) };
}

export class FakeServer {
  constructor(base = "http://server.test/") {
    this.base = base; // this node's base URL (owner routing)
    this.owners = new Map(); // channel -> the base URL of the node serving it instead
    this.epoch = "E1";
    this.logs = new Map(); // channel -> publications of the current epoch
    this.sockets = []; // every FakeWebSocket made, open or not
    this.streams = new Set(); // open SSE streams
    this.waiters = new Set(); // held long polls
    this.requests = []; // every fetch: {url, headers}
    this.connects = []; // every connect command: its token
    // "serve" | "refuse" (handshake fails) | "silent" (never opens) | "error-only" (handshake
    // fails with an error event and no close event, as Node 20's WebSocket does)
    this.wsMode = "serve";
    this.sseMode = "serve"; // "serve" | "missing" (a 404 that is not tidings)
    this.pollPositions = true; // poll answers carry 1.1 `positions` (false: a 1.0 server)
    this.pingS = 25;
    this.validTokens = null; // a Set of accepted tokens, or null: anonymous only
    this.failSubscribes = []; // error codes the next subscribes are refused with
    this.expiresS = null; // () => the `expires` of a connect or refresh reply, or null
    this.refreshes = []; // every refresh command: its token
    this.refuseRefreshes = false;
    this.down = false; // a dead node: every connection refused (see kill())
    this.refuseNext = 0; // the next connections refused as a dead node's, then served
    this.refusedConnections = 0; // connections refused so (WebSockets and fetches)
    this.cuts = new Set(); // held long polls' rejections
    const server = this;
    this.WebSocket = class extends FakeWebSocket {
      constructor(url) {
        super(url, server);
      }
    };
    this.fetch = (url, init = {}) => this._fetch(url, init);
  }

  // -- the channel model -------------------------------------------------------------

  log(channel) {
    if (!this.logs.has(channel)) this.logs.set(channel, []);
    return this.logs.get(channel);
  }

  head(channel) {
    const log = this.log(channel);
    return { epoch: this.epoch, offset: log.length ? log[log.length - 1].offset : 0 };
  }

  publish(channel, data, info = undefined) {
    const log = this.log(channel);
    const publication = { channel, epoch: this.epoch, offset: log.length + 1, data, ts: Date.now() };
    if (info) publication.info = info;
    log.push(publication);
    for (const socket of this.sockets) socket.deliver(publication);
    for (const stream of this.streams) stream.deliver(publication);
    for (const waiter of this.waiters) waiter(publication);
    return publication;
  }

  /** Lose every history, as a restarted in-memory server does. */
  restart(epoch) {
    this.epoch = epoch;
    this.logs = new Map();
    for (const socket of this.sockets) socket.serverClose(1012, "restarting", true);
    for (const stream of this.streams) stream.end();
  }

  since(channel, position) {
    const head = this.head(channel);
    if (!position) return { ...head, recovered: false, publications: [] };
    if (position.epoch !== head.epoch || position.offset > head.offset) {
      return { ...head, recovered: false, publications: [] };
    }
    const publications = this.log(channel).filter((p) => p.offset > position.offset);
    return { ...head, recovered: true, publications };
  }

  isAuthorized(token) {
    if (this.validTokens === null) return !token;
    return this.validTokens.has(token);
  }

  /** Die as a SIGKILLed node does: every connection cut, every new one refused. */
  kill() {
    this.down = true;
    this.cutConnections();
  }

  /** Cut every open connection without a word (no `disconnect`), as a network does. */
  cutConnections() {
    for (const socket of this.sockets) if (socket.readyState === 1) socket._closed(1006, "");
    for (const stream of this.streams) stream.cut();
    for (const cut of this.cuts) cut();
  }

  /** Whether to refuse a new connection (counted): the node is down, or refuseNext. */
  refuses() {
    if (!this.down && this.refuseNext <= 0) return false;
    if (!this.down) this.refuseNext -= 1;
    this.refusedConnections += 1;
    return true;
  }

  // -- HTTP ----------------------------------------------------------------------------

  async _fetch(url, init) {
    if (this.refuses()) throw new TypeError("fetch failed"); // what fetch says of a dead host
    const parsed = new URL(url);
    const headers = init.headers ?? {};
    this.requests.push({ url: parsed, headers });
    const token = (headers.authorization ?? "").replace(/^Bearer /, "") || null;
    if (parsed.pathname.endsWith("/route")) {
      const owner = this.owners.get(parsed.searchParams.get("channel"));
      return jsonResponse({ url: owner ?? this.base });
    }
    const moved = parsed.searchParams.getAll("channel").find((c) => this.owners.has(c));
    if (moved && /\/(sse|poll)$/.test(parsed.pathname)) {
      // docs/protocol.md §9: the same request on the owner of one of its channels.
      const endpoint = parsed.pathname.slice(parsed.pathname.lastIndexOf("/") + 1);
      const location = new URL(endpoint + parsed.search, this.owners.get(moved)).href;
      return new Response(JSON.stringify({ error: { code: "moved", message: "elsewhere" } }), {
        status: 307,
        headers: { location, "content-type": "application/json" },
      });
    }
    if (parsed.pathname.endsWith("/sse")) {
      if (this.sseMode === "missing") return new Response("Not Found", { status: 404 });
    }
    if (!this.isAuthorized(token)) {
      return jsonResponse({ error: { code: "unauthorized", message: "no" } }, 401);
    }
    const channels = parsed.searchParams.getAll("channel");
    const since = parsed.searchParams.getAll("since").map(parseSince);
    const cursor = parsed.searchParams.get("cursor");
    const positions = {};
    if (cursor) Object.assign(positions, JSON.parse(atob(cursor)));
    channels.forEach((channel, i) => {
      if (since[i]) positions[channel] = since[i];
    });
    if (parsed.pathname.endsWith("/sse")) return new FakeStream(this, channels, positions, init.signal).response;
    if (parsed.pathname.endsWith("/poll")) return this._poll(channels, positions, parsed, init.signal);
    return new Response("Not Found", { status: 404 });
  }

  async _poll(channels, positions, url, signal) {
    const wait = Number(url.searchParams.get("wait") ?? 0);
    const answer = () => {
      let recovered = channels.every((c) => positions[c]);
      const publications = [];
      const after = {};
      const positioned = {};
      for (const channel of channels) {
        const read = this.since(channel, positions[channel]);
        if (!read.recovered) recovered = false;
        publications.push(...read.publications);
        after[channel] = { epoch: read.epoch, offset: read.offset };
        positioned[channel] = { ...after[channel], recovered: read.recovered };
      }
      const body = { publications, cursor: btoa(JSON.stringify(after)), recovered };
      return this.pollPositions ? { ...body, positions: positioned } : body;
    };
    const first = answer();
    if (!wait || first.publications.length || !first.recovered) return jsonResponse(first);
    await new Promise((resolve, reject) => {
      const waiter = (publication) => {
        if (channels.includes(publication.channel)) done();
      };
      const cut = () => {
        this.waiters.delete(waiter);
        this.cuts.delete(cut);
        reject(new TypeError("fetch failed"));
      };
      const done = () => {
        this.waiters.delete(waiter);
        this.cuts.delete(cut);
        resolve();
      };
      this.waiters.add(waiter);
      this.cuts.add(cut);
      signal?.addEventListener("abort", () => {
        this.waiters.delete(waiter);
        this.cuts.delete(cut);
        reject(new DOMException("aborted", "AbortError"));
      });
    });
    return jsonResponse(answer());
  }
}

class FakeStream {
  constructor(server, channels, positions, signal) {
    this.server = server;
    this.channels = channels;
    let controller;
    const body = new ReadableStream({
      start: (c) => {
        controller = c;
      },
    });
    this.controller = controller;
    this.response = new Response(body, {
      status: 200,
      headers: { "content-type": "text/event-stream; charset=utf-8" },
    });
    const subscribed = {};
    const replays = [];
    for (const channel of channels) {
      const read = server.since(channel, positions[channel]);
      subscribed[channel] = { epoch: read.epoch, offset: read.offset, recovered: read.recovered };
      replays.push(...read.publications);
    }
    this.write(`retry: 1000\nevent: subscribed\ndata: ${JSON.stringify({ channels: subscribed })}\n\n`);
    for (const publication of replays) this.deliver(publication);
    server.streams.add(this);
    signal?.addEventListener("abort", () => {
      server.streams.delete(this);
      try {
        controller.error(new DOMException("aborted", "AbortError"));
      } catch {
        // closed already
      }
    });
  }

  write(text) {
    try {
      this.controller.enqueue(encoder.encode(text));
    } catch {
      // closed
    }
  }

  deliver(publication) {
    if (this.channels.includes(publication.channel)) {
      this.write(`id: x\nevent: pub\ndata: ${JSON.stringify(publication)}\n\n`);
    }
  }

  ping() {
    this.write(": ping\n\n");
  }

  /** End the stream as a dead node's does: no `disconnect`, a read that fails. */
  cut() {
    this.server.streams.delete(this);
    try {
      this.controller.error(new TypeError("terminated"));
    } catch {
      // closed
    }
  }

  end(goodbye = { code: 1012, reason: "restarting", reconnect: true }) {
    this.server.streams.delete(this);
    this.write(`event: disconnect\ndata: ${JSON.stringify(goodbye)}\n\n`);
    try {
      this.controller.close();
    } catch {
      // closed
    }
  }
}

class FakeWebSocket {
  constructor(url, server) {
    this.url = url;
    this.server = server;
    this.sent = [];
    this.subscriptions = new Set();
    this.readyState = 0;
    server.sockets.push(this);
    setTimeout(() => {
      if (this.readyState !== 0) return; // closed by the client before it opened
      if (server.refuses() || server.wsMode === "refuse") this._closed(1006, "");
      else if (server.wsMode === "error-only") this.onerror?.({});
      else if (server.wsMode === "serve") {
        this.readyState = 1;
        this.onopen?.({});
      }
    }, 0);
  }

  send(text) {
    if (this.readyState !== 1) return;
    const command = JSON.parse(text);
    this.sent.push(command);
    const reply = (result) => this.push({ id: command.id, result });
    const fail = (code, message) => this.push({ id: command.id, error: { code, message } });
    const server = this.server;
    switch (command.op) {
      case "connect":
        server.connects.push(command.token ?? null);
        if (!server.isAuthorized(command.token)) {
          fail("unauthorized", "bad token");
          this.serverClose(4001, "unauthorized", false);
          return;
        }
        reply({
          client: `c${server.sockets.length}`,
          user: "",
          ping: server.pingS,
          version: "1",
          ...(server.expiresS ? { expires: server.expiresS() } : {}),
        });
        return;
      case "refresh":
        server.refreshes.push(command.token);
        if (server.refuseRefreshes || !server.isAuthorized(command.token)) {
          fail("unauthorized", "refresh refused");
          return;
        }
        reply(server.expiresS ? { expires: server.expiresS() } : {});
        return;
      case "subscribe": {
        if (this.movedElsewhere(command)) return;
        if (command.channel.startsWith("secret:")) {
          fail("permission_denied", "not yours");
          return;
        }
        if (server.failSubscribes.length) {
          fail(server.failSubscribes.shift(), "refused on purpose");
          return;
        }
        const read = server.since(command.channel, command.since);
        this.subscriptions.add(command.channel);
        reply(read);
        return;
      }
      case "unsubscribe":
        this.subscriptions.delete(command.channel);
        reply({});
        return;
      case "publish": {
        if (this.movedElsewhere(command)) return;
        const publication = server.publish(command.channel, command.data);
        reply({ epoch: publication.epoch, offset: publication.offset });
        return;
      }
      case "history":
        if (this.movedElsewhere(command)) return;
        reply({ ...server.head(command.channel), publications: server.log(command.channel) });
        return;
      case "presence":
        if (this.movedElsewhere(command)) return;
        reply({ clients: { c1: { user: "ann" } } });
        return;
      default:
        reply({});
    }
  }

  /** Answer `moved` to a command about a channel another node owns (protocol §9). */
  movedElsewhere(command) {
    const owner = this.server.owners.get(command.channel);
    if (!owner) return false;
    const url = new URL("ws", owner).href.replace(/^http/, "ws");
    this.push({ id: command.id, error: { code: "moved", message: "elsewhere", url } });
    return true;
  }

  push(frame) {
    if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(frame) });
  }

  deliver(publication) {
    if (this.subscriptions.has(publication.channel)) this.push({ push: "pub", ...publication });
  }

  serverClose(code, reason, reconnect, delay = undefined, url = undefined) {
    if (this.readyState !== 1) return;
    this.push({ push: "disconnect", code, reason, reconnect, delay, url });
    this._closed(code, reason);
  }

  close() {
    this._closed(1005, "");
  }

  _closed(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
}
