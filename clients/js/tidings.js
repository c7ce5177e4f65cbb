// tidings — the browser client. An ES module, no build step, no dependencies.
//
//   import { Tidings } from "/static/tidings.js";
//   const tidings = new Tidings("/");
//   tidings.on("publication", (p) => console.log(p.channel, p.data));
//   tidings.subscribe("room:45");
//   tidings.connect();
//
// Theory of operation
// -------------------
// One loop (`_run`) runs sessions one after another, each over one transport:
// WebSocket, else Server-Sent Events, else long polling (`transports` option). A
// session ends with an outcome that decides what comes next (see core.js
// TransportRoute): "reconnect" (backoff with full jitter, or the `delay` the server's
// `disconnect` gave, then again; before any
// transport has worked, the next transport at once), "refused" (this transport is not
// served here: the next one at once), "unreachable" (the server is down: back to the
// first transport after the backoff), "unauthorized" (ask the token callback for a
// fresh token and retry once), "stop" (the server said not to come back: the client
// fails and tells the application), "restart" (the channels changed: reopen at once).
//
// Every transport feeds one PositionTracker (core.js), which drops duplicates and
// decides gaps, so switching transport resumes from the same positions: WebSocket
// `since`, SSE and polling `since=` per channel (polling keeps its cursor).
//
// Owner routing (docs/protocol.md §9): a node that does not serve a channel says where
// it is served: a WebSocket `subscribe` answered `moved` with the owner's URL; a 307 to
// an SSE stream or a poll (fetched with `redirect: "manual"`: a browser hides the
// Location of such an answer, so the client asks the node `GET /route?channel=` for
// each channel of the request, and follows Location only where it can read it); a
// `disconnect` with `url` (4503: the connection's own key moved). A moved channel
// leaves this client's tracker with its position for an internal client of the same
// options at the owner (one per node: `_clientAt`), whose events reach this client's
// listeners; `positions()`, `unsubscribe` and `close()` reach them too. A 4503 moves
// the whole connection to `url` after the usual randomised delay. No channel is
// redirected more than MAX_REDIRECTS times in a row without a node serving it: past
// that it is dropped with an `error` (`too_many_redirects`, its `channel`), like any
// refused channel. An owner that dies strands its channels at a node that answers no
// more: after OWNER_UNREACHABLE_ATTEMPTS connections in a row to it that never opened
// (docs/protocol.md §12 rule 6), they go back with their positions to the node first
// given (the root's `_givenUrl`), which names the next owner once the ring has changed
// (or serves them itself); going back is not a redirect: their counts start afresh.
//
// Tokens: with a token callback, a WebSocket renews its token before it expires: the
// connect reply's `expires` (Unix seconds) schedules a `refresh` command carrying a
// fresh token from the callback, and each refresh reply's `expires` the next one. A
// refused refresh is reported (`error`) and left alone: the server closes at expiry
// with 4001 "token expired", and the client reconnects with a fresh token (as it does
// when an SSE stream or a poll ends at expiry).
//
// Liveness: the WebSocket expects some frame at least every `ping` seconds (the
// server sends `{"push": "ping"}` after that much silence); SSE is read with fetch,
// not EventSource, so the `: ping` comments sent every 15 s are seen (EventSource
// hides them) — and HTTP statuses too, which EventSource hides as well, and which
// the fallback needs. A link silent for twice its heartbeat is closed and reopened.

import {
  AUTO_TRANSPORTS,
  Backoff,
  LONG_POLL_WAIT_S,
  MAX_REDIRECTS,
  PositionTracker,
  Redirects,
  SSE_HEARTBEAT_S,
  SseParser,
  TidingsError,
  TransportRoute,
  UnansweredConnections,
  baseUrl,
  checkChannel,
  closeAction,
  httpAction,
  isTokenExpiring,
  newKey,
  nodeBase,
  parseWsFrame,
  pollUrl,
  publicationOf,
  publicationsOf,
  renewInMs,
  samePosition,
  serverDelayMs,
  sseUrl,
  wsUrl,
} from "./core.js";

export { Backoff, PositionTracker, TidingsError } from "./core.js";

const DEFAULTS = Object.freeze({
  transports: AUTO_TRANSPORTS,
  token: null,
  backoff: {},
  connectTimeoutMs: 10000,
  commandTimeoutMs: 10000,
  heartbeatGraceMs: 2000,
  longPollWaitS: LONG_POLL_WAIT_S,
  pollIntervalMs: 1000,
});
const POLL_LIMIT = 100; // the server's default page size
const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout fires at once past this
// A subscribe refused with one of these may succeed later: reconnect and try again.
// Any other refusal (permission_denied, bad_request, too_many_requests: the limit of
// subscriptions per connection) drops the channel and tells the application.
const RETRYABLE_CODES = ["unavailable", "internal"];
// What a client at another node (owner routing) tells the application through this one.
const FORWARDED_EVENTS = ["publication", "gap", "subscribed", "join", "leave", "error"];

/**
 * A connection to a tidings server, over the first transport that works.
 *
 * Events (`on(type, listener)`; returns a function that removes the listener):
 * - `publication`: `{channel, epoch, offset, data, ts, key?, info?}`, in offset order
 *   per channel, each once, whichever transport carried it;
 * - `gap`: `{channel, since, position}`: publications after `since` were lost
 *   (the history no longer holds them): refetch that channel's state;
 * - `subscribed`: `{channel, position, recovered, transport}`;
 * - `join`, `leave`: `{channel, client, user}` (WebSocket, namespaces with presence);
 * - `state`: `{state, transport}`, state one of `idle`, `connecting`, `connected`,
 *   `disconnected` (waiting to reconnect), `failed` (the server said stop), `closed`;
 * - `error`: a TidingsError (`code`, `message`, and `channel` when one channel was
 *   refused); the client goes on unless its state becomes `failed`. A page whose
 *   origin the node refuses gets one `error` with code `origin_refused`, then `failed`.
 */
export class Tidings {
  /**
   * @param url the server's address (`"/"`, `"https://rt.example.com"`, any mount path);
   *   relative to the page in a browser.
   * @param options
   *   - transports: the transports to try in order (default ["ws", "sse", "longpoll"];
   *     also "poll" for short polling every `pollIntervalMs`)
   *   - token: a JWT string, or `async ({refresh}) => jwt`, called before connecting
   *     when there is no token yet, when it expires within 30 s, once after the
   *     server refused it or closed at its expiry (`refresh: true`), and over
   *     WebSocket shortly before it expires (sent with the `refresh` command)
   *   - backoff: `{baseMs: 200, capMs: 15000}` reconnection delays (full jitter)
   *   - connectTimeoutMs, commandTimeoutMs, heartbeatGraceMs, longPollWaitS,
   *     pollIntervalMs; WebSocket, fetch (to run outside a browser, or in tests)
   * @throws TidingsError `unsupported` when "ws" is among the transports and there is
   *   no WebSocket (Node 20: pass `WebSocket` from the `ws` package)
   */
  constructor(url, options = {}) {
    const settings = { ...DEFAULTS, ...options };
    this.url = baseUrl(url, globalThis.location?.href);
    this.state = "idle";
    this.transport = null;
    this.clientId = null;
    this.user = null;
    this._settings = settings;
    this._transports = [...settings.transports];
    new TransportRoute(this._transports); // validates the names now
    this._WebSocket = settings.WebSocket ?? globalThis.WebSocket;
    if (this._transports.includes("ws") && typeof this._WebSocket !== "function") {
      // Node 20 has no global WebSocket: say so now rather than fall back to SSE without
      // a word (and lose publish, history and presence, which need the WebSocket).
      throw new TidingsError(
        "unsupported",
        "this runtime has no WebSocket: pass one (in Node: " +
          "`import { WebSocket } from \"ws\"; new Tidings(url, { WebSocket })`), " +
          'or leave "ws" out of `transports` (e.g. ["sse", "longpoll"])',
      );
    }
    this._fetch = settings.fetch ?? globalThis.fetch?.bind(globalThis);
    this._tracker = new PositionTracker();
    this._backoff = new Backoff(settings.backoff);
    this._listeners = new Map();
    this._token = typeof settings.token === "string" ? settings.token : null;
    this._refreshToken = false;
    this._session = null;
    this._running = null;
    this._closed = false;
    this._wake = null; // resolves the current wait (backoff, idle session)
    this._pollCursor = null; // the last poll answer's cursor and the channels it covers
    // Owner routing: the client the application made, clients at other nodes for the
    // channels they serve, and each channel's redirects in a row (kept by the root).
    this._root = this;
    this._givenUrl = this.url; // (the root's) where channels go back when an owner died
    this._children = [];
    this._redirects = new Redirects();
  }

  // -- the application's side ----------------------------------------------------

  /** Listen to `type` (see the class comment); returns a function removing the listener. */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this._listeners.get(type)?.delete(listener);
  }

  /** Start connecting (idempotent). Subscriptions may be made before or after. */
  connect() {
    if (this._closed) throw new TidingsError("closed", "this client was closed; make a new one");
    if (!this._running) this._running = this._run();
    return this;
  }

  /**
   * Receive `channel`'s publications, resuming after `since` (`{epoch, offset}`, e.g.
   * from `positions()` or a history read) if given; without it, from now.
   */
  subscribe(channel, { since = null } = {}) {
    checkChannel(channel);
    if (this._holder(channel)) return;
    this._tracker.add(channel, since);
    this._session?.subscribe(channel);
  }

  /** Stop receiving `channel`'s publications. */
  unsubscribe(channel) {
    const holder = this._holder(channel);
    if (holder !== this) {
      holder?.unsubscribe(channel);
      return;
    }
    this._tracker.remove(channel);
    this._session?.unsubscribe(channel);
  }

  /** `{channel: {epoch, offset}}`: where the application is in each channel. */
  positions() {
    const held = this._children.map((child) => child.positions());
    return Object.assign({}, ...held, this._tracker.positions());
  }

  /**
   * Publish `data` in `channel` (WebSocket only; the namespace must allow client
   * publishing). A `key` makes a retry safe: the server publishes a key once.
   * @returns `{epoch, offset}`
   */
  publish(channel, data, { key = newKey() } = {}) {
    checkChannel(channel);
    return this._command("publish", { channel, data, key });
  }

  /**
   * Read `channel`'s history (WebSocket only): the latest `limit` publications, or
   * those after `since`. @returns `{epoch, offset, publications, recovered?}`
   */
  async history(channel, { since = null, limit = null } = {}) {
    checkChannel(channel);
    const fields = { channel };
    if (since) fields.since = { epoch: since.epoch, offset: since.offset };
    if (limit !== null) fields.limit = limit;
    const result = await this._command("history", fields);
    return { ...result, publications: publicationsOf(result.publications) };
  }

  /** Who is subscribed to `channel` (WebSocket only): `{clientId: {user}}`. */
  async presence(channel) {
    checkChannel(channel);
    const result = await this._command("presence", { channel });
    return result.clients ?? {};
  }

  /** Disconnect for good. */
  close() {
    if (this._closed) return;
    this._closed = true;
    for (const child of this._children) child.close();
    this._session?.abort("closed");
    this._wake?.(); // a backoff wait
    this._setState("closed");
  }

  // -- the loop ------------------------------------------------------------------

  async _run() {
    const route = new TransportRoute(this._transports);
    const unanswered = new UnansweredConnections();
    let refreshed = false;
    let restarting = false;
    while (!this._closed) {
      const name = route.current;
      this.transport = name;
      // Reopening a stream for a new channel keeps the state the page shows.
      if (!restarting) this._setState("connecting");
      restarting = false;
      const attempt = { connected: false, subscribed: false };
      let end;
      try {
        end = await this._runSession(name, attempt);
      } catch (error) {
        end = { outcome: "reconnect", error }; // a failure of this client: try again
      }
      this._session = null;
      if (this._closed) return;
      if (!attempt.connected && (end.outcome === "reconnect" || end.outcome === "unreachable")) {
        const refusal = await this._originRefusal();
        if (this._closed) return;
        if (refusal) end = { outcome: "stop", error: refusal };
      }
      if (unanswered.receiveEnd(end.outcome, attempt.connected) && this.url !== this._root._givenUrl) {
        unanswered.reset();
        this._returnToGivenNode();
        if (this._closed) return; // a client at another node, left with nothing to hold
        continue; // the root itself, at the node first given, at once
      }
      if (attempt.connected) refreshed = false;
      if (attempt.subscribed) this._backoff.reset();
      if (end.outcome === "restart") {
        restarting = this.state === "connected";
        continue;
      }
      if (end.outcome === "moved") {
        await this._followRedirect(end);
        restarting = this.state === "connected";
        continue; // the channels that stay, at once
      }
      if (end.outcome === "unauthorized") {
        if (typeof this._settings.token === "function" && !refreshed) {
          refreshed = true;
          this._refreshToken = true;
          continue;
        }
        end = { outcome: "stop", error: end.error };
      }
      if (end.outcome === "stop") {
        this._emit("error", end.error ?? new TidingsError("closed", "the server ended the session"));
        this._setState("failed");
        return;
      }
      if (end.outcome !== "retry" && !route.receiveFailure(end.outcome, attempt.connected)) {
        continue; // the next transport, at once
      }
      this._setState("disconnected");
      // A draining server's delay spreads its clients' reconnects: it replaces the backoff.
      await this._wait(end.delayMs ?? this._backoff.nextDelayMs());
      // docs/protocol.md §9: a connection whose key moved comes back at the owner.
      if (end.url) this.url = nodeBase(end.url, this.url);
    }
  }

  _runSession(name, attempt) {
    if (name !== "poll" && name !== "longpoll") this._pollCursor = null;
    switch (name) {
      case "ws":
        return this._wsSession(attempt);
      case "sse":
        return this._sseSession(attempt);
      case "longpoll":
        return this._pollSession(attempt, this._settings.longPollWaitS, 0);
      default:
        return this._pollSession(attempt, 0, this._settings.pollIntervalMs);
    }
  }

  // -- WebSocket -----------------------------------------------------------------

  async _wsSession(attempt) {
    let token;
    try {
      token = await this._currentToken();
    } catch (error) {
      return { outcome: "retry", error };
    }
    if (this._closed) return { outcome: "closed" };
    if (!this._WebSocket) return { outcome: "refused" };
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new this._WebSocket(wsUrl(this.url));
      } catch (error) {
        resolve({ outcome: "refused", error });
        return;
      }
      const pending = new Map();
      let nextId = 1;
      let opened = false;
      let connected = false;
      let ended = false;
      let goodbye = null;
      let pingMs = null;
      let lastHeardMs = Date.now();
      const startedMs = lastHeardMs;

      let renewal = null; // the timer of the next token refresh
      const finish = (end) => {
        if (ended) return;
        ended = true;
        clearInterval(watchdog);
        clearTimeout(renewal);
        for (const entry of pending.values()) {
          entry.reject(new TidingsError("disconnected", "the connection closed before the reply"));
        }
        pending.clear();
        try {
          ws.close();
        } catch {
          // already closing
        }
        resolve(end);
      };
      const send = (op, fields, onResult, onError) => {
        const id = nextId++;
        pending.set(id, { resolve: onResult, reject: onError });
        ws.send(JSON.stringify({ op, id, ...fields }));
      };
      const subscribe = (channel) => {
        const since = this._tracker.position(channel);
        send(
          "subscribe",
          since ? { channel, since } : { channel },
          (result) => this._receiveSubscribed(channel, result, publicationsOf(result.publications), "ws", attempt),
          (error) => {
            if (error.code === "moved" && error.url) {
              this._move([[channel, nodeBase(error.url, this.url)]]);
            } else if (RETRYABLE_CODES.includes(error.code)) {
              this._emit("error", Object.assign(error, { channel }));
              finish({ outcome: "reconnect", error }); // subscribe everything again, later
            } else {
              this._refuseChannel(channel, error);
            }
          },
        );
      };
      const check = () => {
        const now = Date.now();
        if (!connected && now - startedMs > this._settings.connectTimeoutMs) {
          finish({ outcome: "reconnect" }); // the handshake or connect reply never came
        } else if (connected && now - lastHeardMs > 2 * pingMs + this._settings.heartbeatGraceMs) {
          finish({ outcome: "reconnect" }); // a dead link: no frame, not even a ping
        }
      };
      const renewBefore = (expires) => {
        clearTimeout(renewal);
        if (typeof this._settings.token !== "function" || typeof expires !== "number") return;
        const delayMs = renewInMs(expires, Date.now());
        // A far expiry is looked at again later rather than overflowing the timer.
        renewal = setTimeout(
          () => (delayMs > MAX_TIMER_MS ? renewBefore(expires) : renew()),
          Math.min(delayMs, MAX_TIMER_MS),
        );
      };
      const renew = async () => {
        let fresh;
        try {
          this._refreshToken = true;
          fresh = await this._currentToken();
        } catch (error) {
          this._emit("error", error); // the close at expiry follows, then a reconnect
          return;
        }
        if (ended || !fresh) return;
        send(
          "refresh",
          { token: fresh },
          (result) => renewBefore(result.expires),
          (error) => error.code !== "disconnected" && this._emit("error", error),
        );
      };
      // One timer per connection, a few ticks per heartbeat interval (re-armed once the
      // connect reply says the interval).
      let watchdog = setInterval(check, Math.min(250, this._settings.connectTimeoutMs / 4));

      this._session = {
        name: "ws",
        subscribe: (channel) => connected && !ended && subscribe(channel),
        unsubscribe: (channel) =>
          connected && !ended && send("unsubscribe", { channel }, () => {}, () => {}),
        abort: (outcome) => finish({ outcome }),
        command: (op, fields) =>
          new Promise((resolveCommand, rejectCommand) => {
            if (!connected || ended) {
              rejectCommand(new TidingsError("disconnected", "not connected"));
              return;
            }
            send(op, fields, resolveCommand, rejectCommand);
          }),
      };

      ws.onopen = () => {
        if (ended) return; // given up on (a timeout, close()) before it opened
        opened = true;
        send(
          "connect",
          token ? { token } : {},
          (result) => {
            connected = true;
            attempt.connected = true;
            pingMs = (Number(result.ping) || 25) * 1000;
            clearInterval(watchdog);
            watchdog = setInterval(check, Math.max(10, Math.min(1000, pingMs / 4)));
            this.clientId = result.client ?? null;
            this.user = result.user ?? null;
            renewBefore(result.expires);
            this._setState("connected");
            for (const channel of this._tracker.channels) subscribe(channel);
            if (!this._tracker.channels.length) attempt.subscribed = true;
          },
          () => {}, // an unauthorized connect is followed by close 4001
        );
      };
      ws.onmessage = (message) => {
        if (ended) return;
        lastHeardMs = Date.now();
        let frame;
        try {
          frame = parseWsFrame(typeof message.data === "string" ? message.data : "");
        } catch (error) {
          this._emit("error", error);
          finish({ outcome: "reconnect", error });
          return;
        }
        switch (frame.kind) {
          case "reply": {
            const entry = pending.get(frame.id);
            pending.delete(frame.id);
            if (entry && frame.error) entry.reject(frame.error);
            else if (entry) entry.resolve(frame.result);
            break;
          }
          case "pub":
            this._emitAll(this._tracker.receivePublication(frame.publication));
            break;
          case "join":
          case "leave":
            if (this._tracker.has(frame.channel)) this._emit(frame.kind, frame);
            break;
          case "disconnect":
            goodbye = frame;
            break;
          default:
            break; // ping: liveness only
        }
      };
      ws.onclose = (event) => {
        if (!opened) {
          finish({ outcome: "reconnect" }); // refused or unreachable: the route decides
          return;
        }
        const code = goodbye?.code ?? event.code;
        let action = closeAction(code);
        if (goodbye && !goodbye.reconnect && action === "reconnect") action = "stop";
        const reason = goodbye?.reason || event.reason || "";
        const error = new TidingsError(action === "unauthorized" ? "unauthorized" : "closed", reason, {
          closeCode: code,
        });
        const url = action === "reconnect" ? (goodbye?.url ?? null) : null;
        finish({ outcome: action, error, delayMs: goodbye?.delay ?? null, url });
      };
      ws.onerror = () => {
        // Before it opened: the attempt failed. A browser's close event follows, but Node
        // 20's WebSocket sends none, and would leave the attempt to the connect timeout.
        // Once open, the close event that follows says how it ended.
        if (!opened) finish({ outcome: "reconnect" });
      };
    });
  }

  async _command(op, fields) {
    // Owner routing (protocol §9): a command about a channel goes over the connection
    // that holds the channel; one answered `moved` is sent once to the owner's.
    const holder = this._holder(fields.channel);
    if (holder && holder !== this) return holder._command(op, fields);
    try {
      return await this._commandHere(op, fields);
    } catch (error) {
      if (error?.code !== "moved" || !error.url) throw error;
      const owner = this._root._clientAt(nodeBase(error.url, this.url));
      if (owner === this) throw error;
      return owner._commandHere(op, fields);
    }
  }

  async _commandHere(op, fields) {
    await this._whenConnected();
    if (this.transport !== "ws" || !this._session?.command) {
      throw new TidingsError(
        "unsupported",
        `${op} needs the WebSocket transport; this client is on ${this.transport}`,
      );
    }
    return this._session.command(op, fields);
  }

  _whenConnected() {
    if (this.state === "connected") return Promise.resolve();
    if (this._closed || this.state === "failed") {
      return Promise.reject(new TidingsError("closed", "this client is not connected"));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new TidingsError("timeout", "not connected in time"));
      }, this._settings.commandTimeoutMs);
      const off = this.on("state", ({ state }) => {
        if (state === "connected") resolve();
        else if (state === "closed" || state === "failed") {
          reject(new TidingsError("closed", "this client is not connected"));
        } else return;
        clearTimeout(timer);
        off();
      });
    });
  }

  // -- Server-Sent Events (read with fetch) -----------------------------------------

  async _sseSession(attempt) {
    if (!this._tracker.channels.length) return this._idle();
    const request = await this._request(
      () => {
        const channels = this._tracker.channels;
        return { channels, url: sseUrl(this.url, channels, this._tracker.positions()).url };
      },
      { accept: "text/event-stream", session: { name: "sse" } },
    );
    if (request.end) return request.end;
    const { response, controller, aborted } = request;
    const { channels } = request.made;
    if (!(response.headers.get("content-type") ?? "").includes("text/event-stream")) {
      controller.abort();
      return { outcome: "refused" };
    }
    if (!response.body) {
      controller.abort();
      return { outcome: "refused" }; // a fetch that cannot stream
    }
    attempt.connected = true;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    let lastHeardMs = Date.now();
    let goodbye = null;
    const silenceMs = 2 * SSE_HEARTBEAT_S * 1000 + this._settings.heartbeatGraceMs;
    const watchdog = setInterval(() => {
      if (Date.now() - lastHeardMs > silenceMs) aborted("reconnect");
    }, 1000);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        lastHeardMs = Date.now();
        for (const item of parser.feed(decoder.decode(value, { stream: true }))) {
          if (item.comment !== undefined) continue; // `: ping`: liveness only
          const data = JSON.parse(item.data);
          if (item.event === "subscribed") {
            for (const channel of channels) {
              const state = data.channels?.[channel];
              if (state) this._receiveSubscribed(channel, state, [], "sse", attempt);
            }
          } else if (item.event === "pub") {
            this._emitAll(this._tracker.receivePublication(publicationOf(data)));
          } else if (item.event === "disconnect") {
            goodbye = data;
          }
        }
      }
    } catch (error) {
      return { outcome: aborted.outcome ?? "reconnect", error };
    } finally {
      clearInterval(watchdog);
      controller.abort();
    }
    if (aborted.outcome) return { outcome: aborted.outcome };
    if (goodbye && goodbye.reconnect === false) {
      const action = closeAction(goodbye.code);
      return {
        outcome: action === "unauthorized" ? action : "stop",
        error: new TidingsError("closed", goodbye.reason ?? "", { closeCode: goodbye.code }),
      };
    }
    return { outcome: "reconnect", delayMs: serverDelayMs(goodbye?.delay), url: goodbye?.url ?? null };
  }

  // -- polling ---------------------------------------------------------------------

  async _pollSession(attempt, waitS, intervalMs) {
    const announced = new Set();
    for (;;) {
      if (!this._tracker.channels.length) return this._idle();
      const request = await this._request(() => this._pollRequest(waitS), {
        accept: "application/json",
        timeoutMs: (waitS + 10) * 1000,
        session: { name: waitS ? "longpoll" : "poll" },
      });
      if (request.end?.outcome === "restart") continue;
      if (request.end) return request.end;
      const { channels, asked } = request.made;
      let answer;
      try {
        answer = await request.response.json();
      } catch (error) {
        return { outcome: request.aborted.outcome ?? "refused", error };
      }
      if (request.aborted.outcome === "restart") continue;
      if (request.aborted.outcome) return { outcome: request.aborted.outcome };
      if (!answer || !Array.isArray(answer.publications) || typeof answer.cursor !== "string") {
        return { outcome: "refused" };
      }
      attempt.connected = true;
      const positions =
        answer.positions && typeof answer.positions === "object" ? answer.positions : null;
      this._pollCursor = { cursor: answer.cursor, channels, positions };
      const publications = publicationsOf(answer.publications);
      const events = this._tracker.receivePage(
        publications,
        answer.recovered === true,
        asked,
        positions,
      );
      for (const channel of channels) {
        if (announced.has(channel) || !this._tracker.has(channel)) continue;
        announced.add(channel);
        attempt.subscribed = true;
        this._root._redirects.receiveServed(channel);
        this._emit("subscribed", {
          channel,
          position: this._tracker.position(channel),
          recovered: positions
            ? positions[channel]?.recovered === true
            : asked[channel] !== null && answer.recovered === true,
          transport: this.transport,
        });
      }
      if (this.state !== "connected") this._setState("connected");
      this._emitAll(events);
      if (this._closed) return { outcome: "closed" };
      if (!waitS && publications.length < POLL_LIMIT) {
        const outcome = await this._pause(intervalMs);
        if (outcome === "closed") return { outcome };
      }
    }
  }

  _pollRequest(waitS) {
    // The last answer's cursor, while it names every channel that has a position
    // (channels added since start from now; one resumed from a position needs since=)
    // at the position held (a 1.1 answer says which positions its cursor names).
    const channels = this._tracker.channels;
    const positions = this._tracker.positions();
    const saved = this._pollCursor;
    const cursorCovers =
      saved &&
      Object.entries(positions).every(
        ([channel, held]) =>
          saved.channels.includes(channel) &&
          (!saved.positions || samePosition(saved.positions[channel], held)),
      );
    const cursor = cursorCovers ? saved.cursor : null;
    return { channels, ...pollUrl(this.url, channels, positions, cursor, waitS) };
  }

  // -- shared by the HTTP transports -------------------------------------------------

  /**
   * GET the URL `make()` builds, as the current session; returns `{response,
   * controller, aborted, made}` for a 200, or `{end}`: how the session ends
   * (unreachable, refused, an HTTP error, or a restart: the channels changed).
   * `aborted(outcome)` cancels the request; `aborted.outcome` says why it was.
   */
  async _request(make, { accept, timeoutMs = this._settings.connectTimeoutMs, session }) {
    const controller = new AbortController();
    const aborted = (outcome) => {
      aborted.outcome ??= outcome;
      controller.abort();
    };
    aborted.outcome = null;
    // Installed before any await: a subscribe from now on restarts this request.
    this._session = {
      ...session,
      subscribe: () => aborted("restart"),
      unsubscribe: () => aborted("restart"),
      abort: aborted,
    };
    let token;
    try {
      token = await this._currentToken();
    } catch (error) {
      return { end: { outcome: aborted.outcome ?? "retry", error } };
    }
    if (aborted.outcome) return { end: { outcome: aborted.outcome } };
    const made = make(); // reads the channels and positions now, after the await
    const url = made.url;
    // Bounds the wait for the answer: for a stream its headers (then the stream's own
    // watchdog takes over), for a poll the whole answer.
    const timer = setTimeout(() => aborted("reconnect"), timeoutMs);
    controller.signal.addEventListener("abort", () => clearTimeout(timer));
    const headers = { accept };
    if (token) headers.authorization = `Bearer ${token}`;
    let response;
    try {
      // Redirects are the client's to follow (owner routing, see the top of this file).
      const init = { headers, signal: controller.signal, cache: "no-store", redirect: "manual" };
      response = await this._fetch(url, init);
    } catch (error) {
      clearTimeout(timer);
      return { end: { outcome: aborted.outcome ?? "unreachable", error } };
    }
    if (response.type === "opaqueredirect" || response.status === 307) {
      clearTimeout(timer);
      const location = response.headers.get("location"); // null in a browser
      return { end: { outcome: aborted.outcome ?? "moved", channels: made.channels, location } };
    }
    if (!response.ok) {
      clearTimeout(timer);
      return { end: await this._httpEnd(response, aborted) };
    }
    if (accept === "text/event-stream") {
      clearTimeout(timer);
    } else {
      const json = response.json.bind(response);
      response.json = async () => {
        try {
          return await json();
        } finally {
          clearTimeout(timer);
        }
      };
    }
    return { response, controller, aborted, made };
  }

  async _httpEnd(response, aborted) {
    let code = null;
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body?.error?.code) {
        code = String(body.error.code);
        message = String(body.error.message ?? message);
      }
    } catch {
      // not a tidings error body
    }
    if (aborted.outcome) return { outcome: aborted.outcome };
    const outcome = httpAction(response.status, code);
    const error = new TidingsError(code ?? "http", message, { status: response.status });
    return { outcome, error };
  }

  // -- what every transport shares ---------------------------------------------------

  _receiveSubscribed(channel, result, publications, transport, attempt) {
    if (!this._tracker.has(channel)) return; // unsubscribed meanwhile
    const position = { epoch: result.epoch, offset: result.offset };
    const recovered = result.recovered === true;
    this._emitAll(this._tracker.receiveSubscribed(channel, position, recovered));
    for (const publication of publications) {
      this._emitAll(this._tracker.receivePublication(publication));
    }
    attempt.subscribed = true;
    this._root._redirects.receiveServed(channel);
    this._setState("connected");
    this._emit("subscribed", {
      channel,
      position: this._tracker.position(channel),
      recovered,
      transport,
    });
  }

  // -- owner routing ------------------------------------------------------------------

  /** The client (this one or one at another node) that holds `channel`, or null. */
  _holder(channel) {
    if (this._tracker.has(channel)) return this;
    return this._children.find((child) => child._tracker.has(channel)) ?? null;
  }

  /**
   * After a 307 to a stream or a poll of `channels`: ask this node where each one is
   * served (`GET /route`) and move those served elsewhere; if it claims them all (or
   * does not answer), follow `location` where it could be read, else wait a backoff
   * delay. Either way each channel's redirect count grows (MAX_REDIRECTS).
   */
  async _followRedirect({ channels, location }) {
    const held = channels.filter((channel) => this._tracker.has(channel));
    const moves = [];
    for (const channel of held) {
      const owner = await this._routeOf(channel);
      if (owner !== null && owner !== this.url) moves.push([channel, owner]);
    }
    if (!moves.length && location) {
      for (const channel of held) moves.push([channel, nodeBase(location, this.url)]);
    }
    if (moves.length) {
      this._move(moves);
      return;
    }
    for (const channel of held) {
      if (!this._root._redirects.receiveMoved(channel)) this._giveUp(channel, this.url);
    }
    this._setState("disconnected");
    await this._wait(this._backoff.nextDelayMs());
  }

  /** The base URL of `channel`'s owner by this node's `GET /route`; null without an answer. */
  async _routeOf(channel) {
    const url = new URL("route", this.url);
    url.searchParams.set("channel", channel);
    try {
      const response = await this._fetch(url.href, { cache: "no-store" });
      const body = await response.json();
      return response.ok && typeof body?.url === "string" ? nodeBase(body.url, this.url) : null;
    } catch {
      return null;
    }
  }

  /** Hand each `[channel, url]` to the client at `url`, with the channel's position. */
  _move(moves) {
    const root = this._root;
    for (const [channel, url] of moves) {
      if (!this._tracker.has(channel)) continue;
      const since = this._tracker.position(channel);
      this._tracker.remove(channel);
      if (!root._redirects.receiveMoved(channel)) {
        this._giveUp(channel, url);
        continue;
      }
      root._clientAt(url).subscribe(channel, { since });
    }
  }

  /**
   * docs/protocol.md §12 rule 6: the node this client is at (where owner routing, or a
   * 4503, sent its channels) answered none of OWNER_UNREACHABLE_ATTEMPTS connections
   * in a row: it died. Take the channels back, with their positions, to the node first
   * given, which names their next owner once the ring has changed (or serves them
   * itself), instead of knocking at the dead node for ever. Not a redirect of a node's:
   * each channel's count starts afresh (while the ring still names the dead owner, the
   * channels bounce between the two, at the pace of the connections' backoff).
   */
  _returnToGivenNode() {
    const root = this._root;
    const channels = this._tracker.channels;
    for (const channel of channels) root._redirects.receiveServed(channel);
    if (this === root) {
      this.url = root._givenUrl; // the whole connection, with the tracker as it is
      return;
    }
    const held = channels.map((channel) => [channel, this._tracker.position(channel)]);
    for (const channel of channels) this._tracker.remove(channel);
    // Nothing is held here any more: stop knocking. Gone before the channels are handed
    // over, so that a node sending them straight back here makes a new client.
    root._children.splice(root._children.indexOf(this), 1);
    this.close();
    const given = root._clientAt(root._givenUrl);
    for (const [channel, since] of held) given.subscribe(channel, { since });
  }

  _giveUp(channel, url) {
    this._tracker.remove(channel);
    const error = new TidingsError(
      "too_many_redirects",
      `channel ${channel} was redirected ${MAX_REDIRECTS} times in a row without being ` +
        `served (last to ${url}); the nodes disagree about its owner`,
      { channel },
    );
    this._root._emit("error", error);
  }

  /** The root's client at node `url`: itself, or one made for it with the same options. */
  _clientAt(url) {
    if (url === this.url) return this;
    let child = this._children.find((candidate) => candidate.url === url);
    if (!child) {
      child = new Tidings(url, this._settings);
      child._root = this;
      for (const type of FORWARDED_EVENTS) child.on(type, (value) => this._emit(type, value));
      this._children.push(child);
      child.connect();
    }
    return child;
  }

  _refuseChannel(channel, error) {
    // "disconnected": subscribed again by the next session; "unauthorized": the server
    // closes with 4001 next, and the client reconnects with a fresh token.
    if (error.code === "disconnected" || error.code === "unauthorized") return;
    this._tracker.remove(channel);
    error.channel = channel;
    this._emit("error", error);
  }

  /**
   * After a cross-origin transport failed before connecting: a TidingsError
   * `origin_refused` when the node refuses this page's origin, else null.
   *
   * A browser hides why such a connection failed: a WebSocket handshake refused with
   * 403 and a fetch blocked for want of CORS headers (the node sends none to an origin
   * it refuses) both look like a network error, as does a node that is down. So the
   * client asks `GET /health`, a simple request any origin may read: a node answers a
   * page's request with `origin_allowed`. No answer (the node is down, or a proxy
   * without CORS headers answered) says nothing, and the client goes on as before; an
   * answer `origin_allowed: false` is definite, and no transport can work from this
   * page until the node's `allowed_origins` changes: the client stops and says so.
   */
  async _originRefusal() {
    const page = globalThis.location?.origin;
    if (!page || !this._fetch || new URL(this.url).origin === page) return null;
    try {
      const response = await this._fetch(new URL("health", this.url).href, {
        cache: "no-store",
        credentials: "omit",
      });
      const body = await response.json();
      if (body?.origin_allowed !== false) return null;
    } catch {
      return null;
    }
    return new TidingsError(
      "origin_refused",
      `origin ${page} is not in the node's allowed_origins (${this.url}): ` +
        "add it there (docs/configuration.md), or serve this page from the node",
    );
  }

  async _currentToken() {
    const option = this._settings.token;
    if (typeof option !== "function") return option ?? null;
    const expiring = this._token !== null && isTokenExpiring(this._token, Date.now());
    if (this._token === null || this._refreshToken || expiring) {
      const refresh = this._token !== null;
      this._token = (await option({ refresh })) ?? null;
      this._refreshToken = false;
    }
    return this._token;
  }

  _idle() {
    // No channel to receive: wait until one is subscribed (or the client closes).
    return new Promise((resolve) => {
      this._session = {
        name: this.transport,
        subscribe: () => resolve({ outcome: "restart" }),
        unsubscribe: () => {},
        abort: (outcome) => resolve({ outcome }),
      };
    });
  }

  _pause(ms) {
    // Between short polls; a new channel or close() ends it early.
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve("elapsed"), ms);
      this._session = {
        name: "poll",
        subscribe: () => {
          clearTimeout(timer);
          resolve("restart");
        },
        unsubscribe: () => {},
        abort: (outcome) => {
          clearTimeout(timer);
          resolve(outcome);
        },
      };
    });
  }

  _wait(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this._wake = done;
    }).finally(() => {
      this._wake = null;
    });
  }

  _setState(state) {
    if (this.state === state || (this._closed && state !== "closed")) return;
    this.state = state;
    this._emit("state", { state, transport: this.transport });
  }

  _emitAll(events) {
    for (const event of events) {
      if (event.type === "publication") this._emit("publication", event.publication);
      else this._emit("gap", { channel: event.channel, since: event.since, position: event.position });
    }
  }

  _emit(type, value) {
    for (const listener of [...(this._listeners.get(type) ?? [])]) {
      try {
        listener(value);
      } catch (error) {
        // The application's bug must not stop the client; report it as uncaught.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
