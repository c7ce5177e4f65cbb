// TypeScript declarations of the tidings JavaScript client (tidings.js). Hand-written:
// the client is plain JavaScript with no build step; keep this file in step with it.

/** Where a channel's reader is: the publication `offset` in stream `epoch`. */
export interface Position {
  epoch: string;
  offset: number;
}

/** The client transports, in the order `auto` tries the first three. */
export type TransportName = "ws" | "sse" | "longpoll" | "poll";

export type ConnectionState =
  | "idle"
  | "connecting"
  | "connected"
  | "disconnected"
  | "failed"
  | "closed";

/** Who published, when the server knows (a client's publication). */
export interface PublicationInfo {
  client?: string;
  user?: string;
}

export interface Publication<T = unknown> {
  channel: string;
  epoch: string;
  offset: number;
  data: T;
  /** Milliseconds since the Unix epoch, when the server accepted it. */
  ts: number;
  key?: string;
  info?: PublicationInfo;
}

export interface GapEvent {
  channel: string;
  /** The position the client held: publications after it were lost. */
  since: Position;
  /** Where the channel is now: the client resumes from here. */
  position: Position;
}

export interface SubscribedEvent {
  channel: string;
  position: Position | null;
  recovered: boolean;
  transport: TransportName;
}

export interface PresenceEvent {
  channel: string;
  client: string;
  user: string;
}

export interface StateEvent {
  state: ConnectionState;
  transport: TransportName | null;
}

export interface TidingsEvents {
  publication: Publication;
  gap: GapEvent;
  subscribed: SubscribedEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
  state: StateEvent;
  error: TidingsError;
}

export interface BackoffOptions {
  /** The first retry waits up to this long (full jitter); default 200. */
  baseMs?: number;
  /** No retry waits longer; default 15000. */
  capMs?: number;
  random?: () => number;
}

/** A token, or a function returning one: called before connecting when there is none
 * or it expires within 30 s, with `refresh: true` after the server refused or expired
 * the last one, and over WebSocket shortly before it expires (the `refresh` command).
 * `null`: connect without a token. */
export type TokenOption =
  | string
  | null
  | ((context: { refresh: boolean }) => string | null | Promise<string | null>);

/** What the client needs of a WebSocket class (the browser's, or the `ws` package's). */
export interface WebSocketClass {
  new (url: string): {
    onopen: ((event: unknown) => void) | null;
    onmessage: ((event: { data: unknown }) => void) | null;
    onclose: ((event: { code: number; reason: string }) => void) | null;
    onerror: ((event: unknown) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
  };
}

export interface TidingsOptions {
  /** Transports to try, in order; default `["ws", "sse", "longpoll"]`. */
  transports?: TransportName[];
  token?: TokenOption;
  backoff?: BackoffOptions;
  connectTimeoutMs?: number;
  commandTimeoutMs?: number;
  heartbeatGraceMs?: number;
  longPollWaitS?: number;
  pollIntervalMs?: number;
  /** Required with "ws" where there is no global WebSocket (Node 20: `ws`'s class). */
  WebSocket?: WebSocketClass;
  fetch?: typeof globalThis.fetch;
}

/** Every error the client throws or emits. */
export class TidingsError extends Error {
  constructor(code: string, message: string, details?: Record<string, unknown>);
  readonly name: "TidingsError";
  /** e.g. `unauthorized`, `permission_denied`, `closed`, `timeout`, `unsupported`,
   * `disconnected`, `origin_refused`, `too_many_redirects` (a channel sent from node
   * to node more than 5 times in a row), or a server error code. */
  code: string;
  /** The channel refused, when one channel was. */
  channel?: string;
  /** Where a `moved` channel is served (docs/protocol.md §9). */
  url?: string;
  /** The WebSocket close code, when the server closed the connection. */
  closeCode?: number;
  /** The HTTP status, when an HTTP transport was answered with an error. */
  status?: number;
}

export interface HistoryResult<T = unknown> extends Position {
  publications: Publication<T>[];
  recovered?: boolean;
}

export class Tidings {
  /**
   * @param url the server's address (`"/"`, `"https://rt.example.com"`, a mount path).
   * @throws TidingsError `unsupported` when "ws" is asked for and there is no WebSocket.
   */
  constructor(url: string | URL, options?: TidingsOptions);
  readonly url: string;
  readonly state: ConnectionState;
  readonly transport: TransportName | null;
  readonly clientId: string | null;
  readonly user: string | null;

  /** Listen to an event; returns a function that removes the listener. */
  on<K extends keyof TidingsEvents>(type: K, listener: (event: TidingsEvents[K]) => void): () => void;
  connect(): this;
  subscribe(channel: string, options?: { since?: Position | null }): void;
  unsubscribe(channel: string): void;
  positions(): Record<string, Position>;
  /** WebSocket only; the namespace must allow client publishing. */
  publish(channel: string, data: unknown, options?: { key?: string }): Promise<Position>;
  /** WebSocket only. */
  history<T = unknown>(
    channel: string,
    options?: { since?: Position | null; limit?: number | null },
  ): Promise<HistoryResult<T>>;
  /** WebSocket only: `{clientId: {user}}`. */
  presence(channel: string): Promise<Record<string, { user: string }>>;
  close(): void;
}

/** Reconnection delays: exponential, capped, with full jitter. */
export class Backoff {
  constructor(options?: BackoffOptions);
  baseMs: number;
  capMs: number;
  attempt: number;
  nextDelayMs(): number;
  reset(): void;
}

/** The positions of the subscribed channels; drops duplicates and tells gaps. */
export class PositionTracker {
  constructor();
  readonly channels: string[];
  add(channel: string, since?: Position | null): void;
  remove(channel: string): void;
  has(channel: string): boolean;
  position(channel: string): Position | null;
  positions(): Record<string, Position>;
}
