// The pure rules of the tidings browser client: positions, duplicates and gaps,
// reconnection delays, the choice of transport, URLs, and frame parsing.
//
// No I/O, no timers, no globals: time and randomness arrive as arguments, so every
// rule here is unit-tested with node's built-in runner (core.test.js). tidings.js
// does the I/O and feeds what the server sends into these functions.
//
// Words are those of docs/protocol.md: channel, publication, epoch, offset, position
// ({epoch, offset}: the last publication a client has in a channel), cursor (opaque).

/** The transports a client can use, in the order `auto` tries them. */
export const TRANSPORTS = Object.freeze(["ws", "sse", "longpoll", "poll"]);
export const AUTO_TRANSPORTS = Object.freeze(["ws", "sse", "longpoll"]);

/** Seconds the server waits between SSE heartbeats (docs/protocol.md §4). */
export const SSE_HEARTBEAT_S = 15;
/** Seconds a long poll may be held by the server (1..60). */
export const LONG_POLL_WAIT_S = 25;

// A position for a channel the client knows nothing of yet. SSE and polling take
// positions as `since=` once per channel, all or none (docs/protocol.md §4, §5); the
// server answers a position it cannot recover with the channel's current one
// (`recovered: false`), which is "start from now" — what the client wants here.
const UNKNOWN_POSITION_TEXT = "unknown-position:0";

const CHANNEL_PATTERN = /^[A-Za-z0-9_\-:.@/=]{1,255}$/;

/** An error with a docs/protocol.md §7 `code` (or a client code: `disconnected`, ...). */
export class TidingsError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.name = "TidingsError";
    this.code = code;
    Object.assign(this, details);
  }
}

/** Throw unless `name` is a valid channel name (docs/protocol.md §1). */
export function checkChannel(name) {
  if (typeof name !== "string" || !CHANNEL_PATTERN.test(name)) {
    throw new TidingsError(
      "bad_request",
      `invalid channel ${JSON.stringify(name)}: 1-255 characters of A-Z a-z 0-9 _ - : . @ / =`,
    );
  }
  return name;
}

/** `epoch:offset`, the text form of a position in `since=` parameters. */
export function positionText(position) {
  return `${position.epoch}:${position.offset}`;
}

/** Whether positions `a` and `b` are the same (false when either is missing). */
export function samePosition(a, b) {
  return Boolean(a && b) && a.epoch === b.epoch && a.offset === b.offset;
}

/**
 * The live catch-up rule: what a publication at `position` is to whoever holds `held`
 * (null: nothing yet), having left the epochs in `left` (a Set or Map of epochs).
 * "deliver": the next one (or nothing held); "already_had": at or below the held offset
 * of the held epoch, or of an epoch left; "hole": ahead of the next one in the held
 * epoch; "gap": another epoch. The server's rule (src/tidings/core/catchup.py), copied;
 * both are checked against clients/catchup_cases.json.
 */
export function catchUp(held, position, left = new Set()) {
  if (!held) return "deliver";
  if (position.epoch === held.epoch) {
    if (position.offset <= held.offset) return "already_had";
    return position.offset === held.offset + 1 ? "deliver" : "hole";
  }
  return left.has(position.epoch) ? "already_had" : "gap";
}

// -- reconnection delays ---------------------------------------------------------

/**
 * Exponential backoff with full jitter: the n-th retry waits a uniform random time
 * in [0, min(cap, base * 2^n)], so the clients of a restarted server come back spread
 * over the window instead of in waves.
 */
export class Backoff {
  constructor({ baseMs = 200, capMs = 15000, random = Math.random } = {}) {
    this.baseMs = baseMs;
    this.capMs = capMs;
    this.random = random;
    this.attempt = 0;
  }

  /** The delay before the next retry; counts the attempt. */
  nextDelayMs() {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 32));
    this.attempt += 1;
    return this.random() * ceiling;
  }

  /** Forget past failures (a connection subscribed). */
  reset() {
    this.attempt = 0;
  }
}

// -- positions, duplicates and gaps ----------------------------------------------

/**
 * The positions of the subscribed channels, whichever transport carries them.
 *
 * Invariants, per channel (the same as the Python client's PositionTracker):
 * 1. No duplicates: a publication at or below the held offset of the held epoch is
 *    dropped, and so is one of an epoch the channel has left.
 * 2. Never backwards within an epoch: a position behind what is held moves nothing.
 * 3. In order, nothing skipped silently: a publication that is not the next one
 *    (a jump, a new epoch) is let through after a gap event.
 * 4. Gaps are told only when a position was given: a subscribe answered
 *    `recovered: false` for a channel with a held position is a gap; without one
 *    there was nothing to recover and the channel starts where the server says.
 *
 * Events returned: `{type: "publication", publication}` and
 * `{type: "gap", channel, since, position}` (`position` is `null` when the server
 * did not say where the channel now is: polling).
 */
export class PositionTracker {
  constructor() {
    this._positions = new Map(); // channel -> position held (absent: none yet)
    this._highest = new Map(); // channel -> Map(epoch -> highest offset held)
  }

  /** Track `channel`, resuming after `since` if given. */
  add(channel, since = null) {
    checkChannel(channel);
    if (!this._highest.has(channel)) this._highest.set(channel, new Map());
    if (since) this._hold(channel, { epoch: since.epoch, offset: since.offset });
  }

  /** Stop tracking `channel`; later publications of it are ignored. */
  remove(channel) {
    this._positions.delete(channel);
    this._highest.delete(channel);
  }

  has(channel) {
    return this._highest.has(channel);
  }

  /** The subscribed channels, in the order they were added. */
  get channels() {
    return [...this._highest.keys()];
  }

  /** The position of `channel`, or null. */
  position(channel) {
    const held = this._positions.get(channel);
    return held ? { ...held } : null;
  }

  /** `{channel: position}` of every channel that has one (resume from these). */
  positions() {
    const result = {};
    for (const [channel, position] of this._positions) result[channel] = { ...position };
    return result;
  }

  /** Whether every subscribed channel has a position. */
  hasAllPositions() {
    return this._positions.size === this._highest.size;
  }

  /**
   * Take the server's answer to subscribing `channel` (WebSocket reply, SSE
   * `subscribed`): its position after any replay and whether the position given was
   * recovered. Feed the replayed publications to receivePublication afterwards.
   */
  receiveSubscribed(channel, position, recovered) {
    if (!this.has(channel)) return [];
    const held = this._positions.get(channel);
    if (!held) {
      this._hold(channel, position);
      return [];
    }
    if (recovered) return [];
    return this._move(channel, position);
  }

  /** Take one publication, replayed or live. */
  receivePublication(publication) {
    const channel = publication.channel;
    if (!this.has(channel)) return [];
    const position = { epoch: publication.epoch, offset: publication.offset };
    const held = this._positions.get(channel);
    // Every epoch the channel held counts as left: the held one is judged by offset.
    const outcome = catchUp(held, position, this._highest.get(channel));
    if (outcome === "already_had") return [];
    const events =
      outcome === "deliver" // else a hole or another epoch: told, then let through
        ? []
        : this._move(channel, { epoch: publication.epoch, offset: publication.offset - 1 });
    this._hold(channel, position);
    return [...events, { type: "publication", publication }];
  }

  /**
   * Take a poll answer (docs/protocol.md §5). A 1.1 server's answer has `positions`:
   * `{channel: {epoch, offset, recovered}}`, where the answer leaves each channel and
   * whether its resume was recovered; a channel not recovered is told a gap to where
   * the server moved it (before its first publication here, or its position). Without
   * `positions` (a 1.0 server) the `recovered` flag is for the whole request and the
   * cursor is opaque, so when it is false the channels that were asked with a position
   * and got nothing in this page are told a gap (position unknown: they continue from
   * the cursor); channels that did get publications are judged by those (a jump is a
   * gap). When some channels were asked without a position the flag says nothing
   * about the others: a gap then shows as a jump.
   *
   * @param publications the answer's publications, in order
   * @param recovered the answer's flag
   * @param asked `{channel: position | null}`: what the request gave each channel
   * @param positions the answer's `positions`, or null (a 1.0 server)
   */
  receivePage(publications, recovered, asked, positions = null) {
    if (positions) return this._receivePositionedPage(publications, positions);
    const events = [];
    const seen = new Set();
    for (const publication of publications) {
      seen.add(publication.channel);
      events.push(...this.receivePublication(publication));
    }
    const allGiven = Object.values(asked).every((position) => position !== null);
    if (recovered || !allGiven) return events;
    for (const [channel, since] of Object.entries(asked)) {
      if (seen.has(channel) || !this.has(channel)) continue;
      const held = this._positions.get(channel);
      if (!held || !samePosition(held, since)) continue;
      this._positions.delete(channel); // the cursor knows where it is; we do not
      events.push({ type: "gap", channel, since: { ...held }, position: null });
    }
    return events;
  }

  _receivePositionedPage(publications, positions) {
    const firsts = new Map();
    for (const publication of publications) {
      if (!firsts.has(publication.channel)) firsts.set(publication.channel, publication);
    }
    const events = [];
    for (const [channel, after] of Object.entries(positions)) {
      if (!this.has(channel) || !isPosition(after)) continue;
      const first = firsts.get(channel);
      // Where the server took this channel from: before its first publication here,
      // or (none here) where the answer leaves it.
      const start = first
        ? { epoch: first.epoch, offset: first.offset - 1 }
        : { epoch: after.epoch, offset: after.offset };
      events.push(...this.receiveSubscribed(channel, start, after.recovered === true));
    }
    for (const publication of publications) events.push(...this.receivePublication(publication));
    return events;
  }

  _hold(channel, position) {
    this._positions.set(channel, { epoch: position.epoch, offset: position.offset });
    const highest = this._highest.get(channel);
    highest.set(position.epoch, Math.max(position.offset, highest.get(position.epoch) ?? 0));
  }

  _move(channel, position) {
    const held = this._positions.get(channel);
    const highest = this._highest.get(channel).get(position.epoch);
    let target = position;
    if (highest !== undefined && position.offset < highest) {
      target = { epoch: position.epoch, offset: highest }; // invariant 2
    }
    if (held && samePosition(held, target)) return [];
    this._hold(channel, target);
    return [{ type: "gap", channel, since: held ? { ...held } : null, position: { ...target } }];
  }
}

// -- the choice of transport -----------------------------------------------------

/**
 * Which transport comes next. With `auto`, the client walks ws -> sse -> longpoll:
 * it moves down at once when a transport is refused (a 404/403 that is not a tidings
 * error, a WebSocket handshake that never opened) while no transport has worked yet.
 * Once one has connected it is kept: a server restart must not push a client onto
 * long polling for good. After the last one fails, and whenever the server is
 * unreachable before a transport was kept, it waits and starts again from the top.
 *
 * Outcomes: "reconnect" (the link failed or the server asked to come back),
 * "refused" (this transport cannot work here), "unreachable" (no server at all).
 */
export class TransportRoute {
  constructor(candidates) {
    if (!candidates.length) throw new TidingsError("bad_request", "no transport to use");
    for (const name of candidates) {
      if (!TRANSPORTS.includes(name)) {
        throw new TidingsError("bad_request", `unknown transport ${name}; use ${TRANSPORTS}`);
      }
    }
    this.candidates = [...candidates];
    this.index = 0;
    this.kept = false;
  }

  get current() {
    return this.candidates[this.index];
  }

  /**
   * Take a session's end; return whether to wait a backoff delay before the next
   * one (false: try the next transport at once).
   * @param outcome "reconnect" | "refused" | "unreachable"
   * @param connected whether this session's transport answered (it works here)
   */
  receiveFailure(outcome, connected) {
    if (connected) this.kept = true;
    if (this.candidates.length === 1) return true;
    if (outcome === "refused" || (outcome === "reconnect" && !this.kept)) {
      this.kept = false;
      this.index += 1;
      if (this.index < this.candidates.length) return false;
      this.index = 0;
    } else if (outcome === "unreachable" && !this.kept) {
      this.index = 0; // the server is down: when it is back, start from the top
    }
    return true;
  }
}

// A server's reconnect delay is followed up to this long (a bound on a server's mistake).
export const MAX_SERVER_DELAY_MS = 300000;

/**
 * The reconnect delay a `disconnect` (push or SSE event) gave, in ms (docs/protocol.md §3,
 * 1.1: a draining node spreads its clients' reconnects so), bounded by
 * MAX_SERVER_DELAY_MS; `null` when it gave none (or nonsense): the backoff decides.
 */
export function serverDelayMs(delay) {
  if (typeof delay !== "number" || !Number.isFinite(delay) || delay < 0) return null;
  return Math.min(delay, MAX_SERVER_DELAY_MS);
}

/** What to do after a WebSocket closed with `code` ("reconnect", "stop", "unauthorized"). */
export function closeAction(code) {
  if (code === 4001) return "unauthorized";
  if (code >= 4000 && code <= 4499) return "stop"; // docs/protocol.md §3: terminal
  return "reconnect"; // 1000, 1001, 1006 (network), 1012, 4500-4999
}

/**
 * What to do after an HTTP answer that is not a stream or a poll answer.
 * @param status the HTTP status
 * @param code the tidings error code of the body, or null if the body is not a
 *   tidings error (a proxy, a server without this transport)
 */
export function httpAction(status, code) {
  if (code === null) {
    // Not tidings speaking: this transport is not served here.
    return status >= 500 ? "reconnect" : "refused";
  }
  if (code === "unauthorized") return "unauthorized";
  if (["unavailable", "too_many_requests", "internal"].includes(code)) return "reconnect";
  return "stop"; // bad_request, permission_denied, not_found, message_too_large
}

// -- URLs ------------------------------------------------------------------------

/** The server's base URL, ending in "/", from what the application gave. */
export function baseUrl(url, pageUrl) {
  const base = new URL(url ?? ".", pageUrl);
  if (base.protocol === "ws:") base.protocol = "http:";
  if (base.protocol === "wss:") base.protocol = "https:";
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  base.search = "";
  base.hash = "";
  return base.href;
}

/**
 * The base URL (ending in "/") of the node `url` points to, as a server names an owner
 * (docs/protocol.md §9): its `/ws` URL in a `moved` reply or a `disconnect`, the same
 * request on it in a 307's `Location`. The query and a final transport path go.
 */
export function nodeBase(url, pageUrl) {
  const parsed = new URL(url, pageUrl);
  parsed.pathname = parsed.pathname.replace(/\/(ws|sse|poll)\/?$/, "/");
  return baseUrl(parsed.href);
}

// docs/protocol.md §9: a channel redirected more often than this in a row without any
// node serving it is given up (nodes that disagree about its owner).
export const MAX_REDIRECTS = 5;

/** Counts each channel's redirects since a node last served it (MAX_REDIRECTS). */
export class Redirects {
  constructor(limit = MAX_REDIRECTS) {
    this.limit = limit;
    this.counts = new Map();
  }

  /** A node subscribed `channel`: its count starts again. */
  receiveServed(channel) {
    this.counts.delete(channel);
  }

  /** `channel` was sent on; returns false once that is more than `limit` in a row. */
  receiveMoved(channel) {
    const count = (this.counts.get(channel) ?? 0) + 1;
    this.counts.set(channel, count);
    return count <= this.limit;
  }
}

// docs/protocol.md §12 rule 6: connections in a row that never opened to a node owner
// routing sent channels to, after which they go back to the node first given.
export const OWNER_UNREACHABLE_ATTEMPTS = 3;
// Session outcomes of a connection that never opened (no handshake, no 200 answer):
// the node did not answer. The others either answered (moved, unauthorized, stop) or
// say nothing about the node (restart: the channels changed; retry: the token callback).
const UNANSWERED_OUTCOMES = ["reconnect", "unreachable", "refused"];

/**
 * Counts one node's connections in a row that never opened, to tell an owner that died
 * (it answers nothing, OWNER_UNREACHABLE_ATTEMPTS times running) from one that closed a
 * connection (it answers the next).
 */
export class UnansweredConnections {
  constructor(limit = OWNER_UNREACHABLE_ATTEMPTS) {
    this.limit = limit;
    this.count = 0;
  }

  /**
   * A session ended with `outcome`, having `connected` (its transport opened) or not;
   * returns whether the node has now not answered `limit` connections in a row (then
   * the caller goes elsewhere and calls `reset()`).
   */
  receiveEnd(outcome, connected) {
    if (connected) this.count = 0;
    else if (UNANSWERED_OUTCOMES.includes(outcome)) this.count += 1;
    return this.count >= this.limit;
  }

  reset() {
    this.count = 0;
  }
}

/** `ws(s)://.../ws` for a base URL. */
export function wsUrl(base) {
  const url = new URL("ws", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/**
 * The `since=`/`cursor=` parameters resuming `channels`: the cursor when one is given
 * (polling keeps the last answer's), otherwise a `since=` per channel when any has a
 * position, with a position the server cannot recover for those that have none.
 * Returns [query parameters, {channel: position | null} as asked].
 */
export function resumeParams(channels, positions, cursor = null) {
  const asked = {};
  for (const channel of channels) asked[channel] = positions[channel] ?? null;
  if (cursor) return [[["cursor", cursor]], asked];
  if (!channels.some((channel) => positions[channel])) return [[], asked];
  const params = channels.map((channel) => [
    "since",
    positions[channel] ? positionText(positions[channel]) : UNKNOWN_POSITION_TEXT,
  ]);
  return [params, asked];
}

/** The URL of an SSE stream of `channels` resuming from `positions`. */
export function sseUrl(base, channels, positions) {
  const url = new URL("sse", base);
  for (const channel of channels) url.searchParams.append("channel", channel);
  const [params, asked] = resumeParams(channels, positions);
  for (const [name, value] of params) url.searchParams.append(name, value);
  return { url: url.href, asked };
}

/** The URL of one poll of `channels` (cursor, else positions), waiting `waitS`. */
export function pollUrl(base, channels, positions, cursor, waitS) {
  const url = new URL("poll", base);
  for (const channel of channels) url.searchParams.append("channel", channel);
  const [params, asked] = resumeParams(channels, positions, cursor);
  for (const [name, value] of params) url.searchParams.append(name, value);
  if (waitS > 0) url.searchParams.set("wait", String(waitS));
  return { url: url.href, asked };
}

// -- frames ----------------------------------------------------------------------

function isPosition(value) {
  return (
    value !== null &&
    typeof value === "object" &&
    typeof value.epoch === "string" &&
    Number.isSafeInteger(value.offset) &&
    value.offset >= 0
  );
}

function isPublication(value) {
  return isPosition(value) && typeof value.channel === "string" && "data" in value;
}

/** Keep only the fields of a publication (docs/protocol.md §1). */
export function publicationOf(frame) {
  const publication = {
    channel: frame.channel,
    epoch: frame.epoch,
    offset: frame.offset,
    data: frame.data,
    ts: frame.ts,
  };
  if (frame.key !== undefined) publication.key = frame.key;
  if (frame.info !== undefined) publication.info = frame.info;
  return publication;
}

/**
 * Parse one WebSocket text frame into
 * `{kind: "reply", id, result}` | `{kind: "reply", id, error}` |
 * `{kind: "pub", publication}` | `{kind: "join"|"leave", channel, client, user}` |
 * `{kind: "ping"}` | `{kind: "disconnect", code, reason, reconnect, url, delay}`.
 * Throws a TidingsError (`protocol`) for anything else.
 */
export function parseWsFrame(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    throw new TidingsError("protocol", "the server sent a frame that is not JSON");
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
    throw new TidingsError("protocol", "the server sent a frame that is not an object");
  }
  if (Number.isInteger(frame.id)) {
    if (frame.error && typeof frame.error === "object") {
      // `url`: where a `moved` channel is served (docs/protocol.md §9).
      const url = typeof frame.error.url === "string" ? { url: frame.error.url } : {};
      const error = new TidingsError(
        String(frame.error.code ?? "internal"),
        String(frame.error.message ?? ""),
        url,
      );
      return { kind: "reply", id: frame.id, error };
    }
    return { kind: "reply", id: frame.id, result: frame.result ?? {} };
  }
  switch (frame.push) {
    case "pub":
      if (!isPublication(frame)) break;
      return { kind: "pub", publication: publicationOf(frame) };
    case "join":
    case "leave":
      return { kind: frame.push, channel: frame.channel, client: frame.client, user: frame.user };
    case "ping":
      return { kind: "ping" };
    case "disconnect":
      return {
        kind: "disconnect",
        code: frame.code,
        reason: frame.reason ?? "",
        reconnect: frame.reconnect !== false,
        url: frame.url ?? null,
        delay: serverDelayMs(frame.delay),
      };
    default:
      break;
  }
  throw new TidingsError("protocol", `the server sent an unknown frame: ${text.slice(0, 100)}`);
}

/** The publications of a subscribe/history result or a poll answer, validated. */
export function publicationsOf(list) {
  if (!Array.isArray(list)) return [];
  return list.filter(isPublication).map(publicationOf);
}

/**
 * An incremental parser of a `text/event-stream` (the HTML standard's rules):
 * feed it text as it arrives, get back whole events `{event, data, id}` and
 * comments `{comment}` (the server's `: ping` heartbeats, which EventSource hides).
 */
export class SseParser {
  constructor() {
    this._buffer = "";
    this._event = "";
    this._data = [];
    this._id = null;
    this._sawCr = false;
  }

  /** Feed a chunk of text; return the events and comments it completes. */
  feed(text) {
    let chunk = text;
    if (this._sawCr && chunk.startsWith("\n")) chunk = chunk.slice(1); // a CRLF split in two
    this._sawCr = chunk.endsWith("\r");
    this._buffer += chunk;
    const out = [];
    const lines = this._buffer.split(/\r\n|\r|\n/);
    this._buffer = lines.pop(); // the unfinished line
    for (const line of lines) this._line(line, out);
    return out;
  }

  _line(line, out) {
    if (line === "") {
      if (this._data.length) {
        out.push({ event: this._event || "message", data: this._data.join("\n"), id: this._id });
      }
      this._event = "";
      this._data = [];
      return;
    }
    if (line.startsWith(":")) {
      out.push({ comment: line.slice(1).trimStart() });
      return;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this._event = value;
    else if (field === "data") this._data.push(value);
    else if (field === "id" && !value.includes("\0")) this._id = value;
    // retry: the client keeps its own backoff
  }
}

// -- tokens ----------------------------------------------------------------------

/** The `exp` of a JWT in milliseconds, or null if it has none or is not a JWT. */
export function tokenExpiresAtMs(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const claims = JSON.parse(atob(padded));
    return Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** Whether `token` expires within `marginMs` of `nowMs` (a token without exp never does). */
export function isTokenExpiring(token, nowMs, marginMs = 30000) {
  const expiresAt = tokenExpiresAtMs(token);
  return expiresAt !== null && expiresAt - nowMs <= marginMs;
}

// Renew this long before `exp`: a quarter of what remains, within these bounds
// (the Python client's tokens.py has the same rule; token_renewal_cases.json).
const RENEW_MARGIN_MIN_MS = 500;
const RENEW_MARGIN_MAX_MS = 30000;

/**
 * How long from `nowMs` to renew a token that expires at `expiresS` (Unix seconds, the
 * `expires` of a connect or refresh reply): never less than nothing.
 */
export function renewInMs(expiresS, nowMs) {
  const leftMs = expiresS * 1000 - nowMs;
  const marginMs = Math.min(RENEW_MARGIN_MAX_MS, Math.max(RENEW_MARGIN_MIN_MS, leftMs / 4));
  return Math.max(0, leftMs - marginMs);
}

/** A random idempotency key for a publish (retries reuse it). */
export function newKey(random = Math.random) {
  let key = "";
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  for (let i = 0; i < 20; i += 1) key += alphabet[Math.floor(random() * alphabet.length)];
  return key;
}
