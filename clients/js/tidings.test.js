// Tests of the client (tidings.js) against a fake server (fake_server.js): transports,
// fallback, resume without duplicates, gaps, heartbeats, tokens. The real server and a
// real browser are exercised by tests/browser/ (pytest + Playwright).

import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { FakeServer } from "./fake_server.js";
import { Tidings } from "./tidings.js";

const clients = [];

function client(server, options = {}) {
  const tidings = new Tidings("http://server.test/", {
    WebSocket: server.WebSocket,
    fetch: server.fetch,
    backoff: { baseMs: 1, capMs: 5 },
    ...options,
  });
  const seen = { publications: [], gaps: [], errors: [], states: [], joins: [] };
  tidings.on("publication", (p) => seen.publications.push(p));
  tidings.on("gap", (g) => seen.gaps.push(g));
  tidings.on("error", (e) => seen.errors.push(e));
  tidings.on("state", (s) => seen.states.push(s));
  tidings.on("join", (j) => seen.joins.push(j));
  clients.push(tidings);
  return { tidings, seen };
}

afterEach(() => {
  while (clients.length) clients.pop().close();
});

/** Resolve once `predicate()` holds, checking after every macrotask (bounded). */
async function until(predicate, what = "the condition") {
  const deadline = Date.now() + 5000;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

function next(tidings, type, filter = () => true) {
  return new Promise((resolve) => {
    const off = tidings.on(type, (value) => {
      if (!filter(value)) return;
      off();
      resolve(value);
    });
  });
}

const offsets = (seen) => seen.publications.map((p) => `${p.epoch}:${p.offset}`);

describe("WebSocket", () => {
  test("subscribes, receives live publications and publishes", async () => {
    const server = new FakeServer();
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    const subscribed = next(tidings, "subscribed");
    tidings.connect();
    assert.deepEqual((await subscribed).position, { epoch: "E1", offset: 0 });
    assert.equal(tidings.transport, "ws");
    server.publish("room:1", "a");
    const reply = await tidings.publish("room:1", "b");
    assert.deepEqual(reply, { epoch: "E1", offset: 2 });
    await until(() => seen.publications.length === 2, "two publications");
    assert.deepEqual(seen.publications.map((p) => p.data), ["a", "b"]);
    const [command] = server.sockets[0].sent.filter((c) => c.op === "publish");
    assert.match(command.key, /^[A-Za-z0-9]{20}$/);
  });

  test("resumes from its position after a restart, without duplicates", async () => {
    const server = new FakeServer();
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    server.publish("room:1", 1);
    await until(() => seen.publications.length === 1);
    server.sockets[0].serverClose(1012, "restarting", true);
    server.publish("room:1", 2); // while the client is away
    const resubscribed = await next(tidings, "subscribed");
    assert.equal(resubscribed.recovered, true);
    server.publish("room:1", 3);
    await until(() => seen.publications.length === 3);
    assert.deepEqual(offsets(seen), ["E1:1", "E1:2", "E1:3"]);
    const resume = server.sockets[1].sent.find((c) => c.op === "subscribe");
    assert.deepEqual(resume.since, { epoch: "E1", offset: 1 });
  });

  test("a server that lost its history is told as a gap", async () => {
    const server = new FakeServer();
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    server.publish("room:1", 1);
    await until(() => seen.publications.length === 1);
    const gap = next(tidings, "gap");
    server.restart("E2");
    assert.deepEqual(await gap, {
      channel: "room:1",
      since: { epoch: "E1", offset: 1 },
      position: { epoch: "E2", offset: 0 },
    });
  });

  test("resuming with a given position that is still in history replays it", async () => {
    const server = new FakeServer();
    server.publish("room:1", 1);
    server.publish("room:1", 2);
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1", { since: { epoch: "E1", offset: 1 } });
    tidings.connect();
    await until(() => seen.publications.length === 1);
    assert.deepEqual(offsets(seen), ["E1:2"]);
    assert.deepEqual(seen.gaps, []);
  });

  test("a silent link is noticed from missing heartbeats and reopened", async () => {
    const server = new FakeServer();
    server.pingS = 0.02;
    const { tidings } = client(server, { heartbeatGraceMs: 10 });
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    // The fake never pings: the client must give up on the socket and open another.
    await until(() => server.sockets.length >= 2, "a second socket");
    assert.equal(server.sockets[0].readyState, 3);
  });

  test("presence events, history and presence commands", async () => {
    const server = new FakeServer();
    server.publish("room:1", "old");
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    server.sockets[0].push({ push: "join", channel: "room:1", client: "c9", user: "bob" });
    await until(() => seen.joins.length === 1);
    assert.equal(seen.joins[0].user, "bob");
    const history = await tidings.history("room:1", { limit: 10 });
    assert.deepEqual(history.publications.map((p) => p.data), ["old"]);
    assert.deepEqual(await tidings.presence("room:1"), { c1: { user: "ann" } });
  });

  test("a channel the server refuses is reported and dropped; the others go on", async () => {
    const server = new FakeServer();
    const { tidings, seen } = client(server);
    tidings.subscribe("secret:1");
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    await until(() => seen.errors.length === 1);
    assert.equal(seen.errors[0].code, "permission_denied");
    assert.equal(seen.errors[0].channel, "secret:1");
    assert.equal(tidings.state, "connected");
  });

  test("a subscribe the server could not serve now is retried on a new connection", async () => {
    const server = new FakeServer();
    server.failSubscribes = ["unavailable"];
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    const subscribed = await next(tidings, "subscribed");
    assert.equal(subscribed.channel, "room:1");
    assert.equal(server.sockets.length, 2);
    assert.equal(seen.errors[0].code, "unavailable");
  });

  test("unsubscribing stops the channel's publications", async () => {
    const server = new FakeServer();
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    tidings.unsubscribe("room:1");
    await until(() => server.sockets[0].sent.some((c) => c.op === "unsubscribe"));
    server.publish("room:1", 1);
    await tidings.history("room:1"); // a round trip after the publication
    assert.deepEqual(seen.publications, []);
  });

  test("a terminal close fails the client and says why", async () => {
    const server = new FakeServer();
    const { tidings, seen } = client(server);
    tidings.connect();
    await next(tidings, "state", (s) => s.state === "connected");
    server.sockets[0].serverClose(4003, "disconnected by the application", false);
    await next(tidings, "state", (s) => s.state === "failed");
    assert.equal(seen.errors[0].closeCode, 4003);
    assert.equal(server.sockets.length, 1);
  });
});

describe("drains", () => {
  // A backoff of a minute: only the server's delay can bring the client back in time.
  const slowBackoff = { backoff: { baseMs: 60000, capMs: 60000, random: () => 1 } };

  test("a WebSocket disconnect's delay replaces the backoff", async () => {
    const server = new FakeServer();
    const { tidings } = client(server, slowBackoff);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    server.sockets[0].serverClose(1001, "server shutting down", true, 0);
    await until(() => server.sockets.length === 2, "a reconnect after the server's delay");
  });

  test("an SSE disconnect event's delay replaces the backoff", async () => {
    const server = new FakeServer();
    const { tidings } = client(server, { ...slowBackoff, transports: ["sse"] });
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    const [stream] = server.streams;
    stream.end({ code: 1001, reason: "server shutting down", reconnect: true, delay: 0 });
    await until(() => server.streams.size === 1 && !server.streams.has(stream), "a new stream");
  });
});

describe("tokens", () => {
  test("a refused token is refreshed once through the callback", async () => {
    const server = new FakeServer();
    server.validTokens = new Set(["fresh"]);
    const calls = [];
    const token = async ({ refresh }) => {
      calls.push(refresh);
      return calls.length === 1 ? "stale" : "fresh";
    };
    const { tidings } = client(server, { token });
    tidings.connect();
    await next(tidings, "state", (s) => s.state === "connected");
    assert.deepEqual(calls, [false, true]);
    assert.deepEqual(server.connects, ["stale", "fresh"]);
  });

  test("a token refused twice in a row fails the client", async () => {
    const server = new FakeServer();
    server.validTokens = new Set();
    const { tidings, seen } = client(server, { token: async () => "never" });
    tidings.connect();
    await next(tidings, "state", (s) => s.state === "failed");
    assert.equal(seen.errors[0].code, "unauthorized");
  });

  test("a WebSocket renews its token with refresh before it expires, staying connected", async () => {
    const server = new FakeServer();
    server.validTokens = null;
    server.isAuthorized = () => true;
    server.expiresS = () => Date.now() / 1000 + 0.8; // renewed 0.5 s before: after 0.3 s
    const calls = [];
    const token = async ({ refresh }) => {
      calls.push(refresh);
      return `t${calls.length}`;
    };
    const { tidings } = client(server, { token });
    tidings.connect();
    await until(() => server.refreshes.length >= 2, "two refreshes");
    assert.deepEqual(server.connects, ["t1"]); // one connection throughout
    assert.deepEqual(server.refreshes.slice(0, 2), ["t2", "t3"]);
    assert.deepEqual(calls.slice(0, 3), [false, true, true]);
    assert.equal(tidings.state, "connected");
  });

  test("a refused refresh is reported and the expiry close reconnects with a fresh token", async () => {
    const server = new FakeServer();
    server.isAuthorized = () => true;
    server.refuseRefreshes = true;
    server.expiresS = () => Date.now() / 1000 + 0.8;
    let calls = 0;
    const { tidings, seen } = client(server, { token: async () => `t${++calls}` });
    tidings.connect();
    await until(() => seen.errors.length === 1, "the refused refresh");
    assert.equal(seen.errors[0].code, "unauthorized");
    server.expiresS = null;
    server.sockets[0].serverClose(4001, "token expired", true); // the server at expiry
    await until(
      () => server.connects.length === 2 && tidings.state === "connected",
      "a second connection",
    );
    assert.deepEqual(server.connects, ["t1", "t3"]); // t2 went with the refused refresh
  });

  test("without a token callback nothing is refreshed", async () => {
    const server = new FakeServer();
    server.validTokens = new Set(["fixed"]);
    server.expiresS = () => Date.now() / 1000 + 0.6;
    const { tidings } = client(server, { token: "fixed" });
    tidings.connect();
    await next(tidings, "state", (s) => s.state === "connected");
    server.sockets[0].serverClose(4001, "token expired", true);
    await next(tidings, "state", (s) => s.state === "failed");
    assert.deepEqual(server.refreshes, []);
  });

  test("the token goes as a bearer header over HTTP", async () => {
    const server = new FakeServer();
    server.validTokens = new Set(["t"]);
    const { tidings } = client(server, { token: "t", transports: ["sse"] });
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    assert.equal(server.requests[0].headers.authorization, "Bearer t");
  });
});

describe("fallback", () => {
  test("a refused WebSocket falls back to SSE, which resumes by since=", async () => {
    const server = new FakeServer();
    server.wsMode = "refuse";
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    assert.equal(tidings.transport, "sse");
    server.publish("room:1", 1);
    await until(() => seen.publications.length === 1);
    for (const stream of server.streams) stream.end();
    server.publish("room:1", 2);
    await until(() => seen.publications.length === 2);
    assert.equal(tidings.transport, "sse");
    const resume = server.requests.at(-1).url.searchParams;
    assert.equal(resume.get("since"), "E1:1");
    assert.deepEqual(offsets(seen), ["E1:1", "E1:2"]);
  });

  test("a handshake failing with an error event and no close event falls back at once", async () => {
    // Node 20's WebSocket: without the error ending the attempt, it would wait out the
    // connect timeout before each try.
    const server = new FakeServer();
    server.wsMode = "error-only";
    const { tidings } = client(server, { connectTimeoutMs: 60000 });
    tidings.subscribe("room:1");
    tidings.connect();
    await until(() => tidings.state === "connected", "connected, long before the timeout");
    assert.equal(tidings.transport, "sse");
  });

  test("without WebSocket and SSE it long-polls, keeping its cursor", async () => {
    const server = new FakeServer();
    server.wsMode = "refuse";
    server.sseMode = "missing";
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    assert.equal(tidings.transport, "longpoll");
    server.publish("room:1", 1);
    server.publish("room:1", 2);
    await until(() => seen.publications.length === 2);
    const last = server.requests.at(-1).url.searchParams;
    assert.equal(last.get("wait"), "25");
    assert.ok(last.get("cursor"));
    assert.deepEqual(seen.gaps, []);
  });

  for (const pollPositions of [true, false]) {
    const version = pollPositions ? "1.1" : "1.0";
    test(`a long poll tells a lost history as a gap (${version} server)`, async () => {
      const server = new FakeServer();
      server.wsMode = "refuse";
      server.sseMode = "missing";
      server.pollPositions = pollPositions;
      const { tidings, seen } = client(server);
      tidings.subscribe("room:1");
      tidings.connect();
      await next(tidings, "subscribed");
      server.publish("room:1", 1);
      await until(() => seen.publications.length === 1);
      const gap = next(tidings, "gap");
      server.restart("E2");
      server.publish("room:1", "after"); // wakes the waiting long poll
      assert.deepEqual(await gap, {
        channel: "room:1",
        since: { epoch: "E1", offset: 1 },
        // A 1.1 answer says where the channel now is; a 1.0 one cannot.
        position: pollPositions ? { epoch: "E2", offset: 1 } : null,
      });
    });
  }

  test("a subscribe while streaming reopens the stream with both channels", async () => {
    const server = new FakeServer();
    server.wsMode = "refuse";
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    server.publish("room:1", 1);
    await until(() => seen.publications.length === 1);
    tidings.subscribe("room:2");
    await next(tidings, "subscribed", (s) => s.channel === "room:2");
    server.publish("room:2", "x");
    await until(() => seen.publications.length === 2);
    const params = server.requests.at(-1).url.searchParams;
    assert.deepEqual(params.getAll("channel"), ["room:1", "room:2"]);
    assert.deepEqual(params.getAll("since"), ["E1:1", "unknown-position:0"]);
    assert.deepEqual(seen.gaps, []);
    // Reopening for a new channel is not shown as a reconnection.
    const after = seen.states.slice(seen.states.findIndex((s) => s.state === "connected"));
    assert.deepEqual(after.map((s) => s.state), ["connected"]);
  });

  test("positions carry over from WebSocket to SSE with nothing lost or repeated", async () => {
    const server = new FakeServer();
    const { tidings, seen } = client(server);
    tidings.subscribe("room:1");
    tidings.connect();
    await next(tidings, "subscribed");
    server.publish("room:1", 1);
    await until(() => seen.publications.length === 1);
    // From now on WebSocket fails before opening: the kept transport is retried, and
    // a client constructed now would walk down to SSE; here we force the walk.
    server.wsMode = "refuse";
    const sse = client(server, { transports: ["sse"] });
    sse.tidings.subscribe("room:1", { since: tidings.positions()["room:1"] });
    sse.tidings.connect();
    server.publish("room:1", 2);
    await until(() => sse.seen.publications.length === 1);
    assert.deepEqual(offsets(sse.seen), ["E1:2"]);
  });

  test("SSE publish is refused: publishing needs the WebSocket", async () => {
    const server = new FakeServer();
    const { tidings } = client(server, { transports: ["sse"] });
    tidings.subscribe("room:1");
    tidings.connect();
    await assert.rejects(tidings.publish("room:1", 1), { code: "unsupported" });
  });
});

describe("lifecycle", () => {
  test("close stops reconnecting and says closed", async () => {
    const server = new FakeServer();
    server.wsMode = "silent";
    const { tidings, seen } = client(server, { transports: ["ws"], connectTimeoutMs: 5 });
    tidings.connect();
    await until(() => server.sockets.length >= 2, "a retry");
    tidings.close();
    const count = server.sockets.length;
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(server.sockets.length, count);
    assert.equal(seen.states.at(-1).state, "closed");
  });

  test("unknown transports are refused at construction", () => {
    assert.throws(() => new Tidings("http://h/", { transports: ["smoke"] }), /unknown transport/);
  });
});

describe("a runtime without WebSocket (Node 20)", () => {
  // Node 20 has no global WebSocket (Node 22 has): take it away whatever runs the tests.
  const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
  const withoutWebSocket = (body) => {
    delete globalThis.WebSocket;
    try {
      body();
    } finally {
      if (saved) Object.defineProperty(globalThis, "WebSocket", saved);
    }
  };

  test("asking for the WebSocket transport throws, naming the ws package", () => {
    withoutWebSocket(() => {
      assert.throws(() => new Tidings("http://h/"), (error) => {
        assert.equal(error.name, "TidingsError");
        assert.equal(error.code, "unsupported");
        assert.match(error.message, /no WebSocket/);
        assert.match(error.message, /"ws"/);
        return true;
      });
      assert.throws(() => new Tidings("http://h/", { transports: ["ws"] }), { code: "unsupported" });
    });
  });

  test("a WebSocket class passed in is used, and HTTP transports need none", async () => {
    const server = new FakeServer();
    withoutWebSocket(() => {
      assert.doesNotThrow(() => new Tidings("http://h/", { transports: ["sse", "longpoll"] }));
    });
    const { tidings, seen } = client(server, { WebSocket: server.WebSocket });
    tidings.subscribe("room:1");
    tidings.connect();
    await until(() => tidings.state === "connected", "connected");
    assert.equal(tidings.transport, "ws");
    assert.deepEqual(seen.errors, []);
  });
});

describe("owner routing", () => {
  /** Two fake nodes on one network: the client reaches each by its host. */
  function ring() {
    const a = new FakeServer("http://a.test/");
    const b = new FakeServer("http://b.test/");
    b.epoch = "EB";
    const at = (url) => (new URL(url).host === "b.test" ? b : a);
    const network = {
      WebSocket: class {
        constructor(url) {
          return new (at(url).WebSocket)(url);
        }
      },
      fetch: (url, init) => at(url).fetch(url, init),
    };
    return { a, b, network };
  }

  function clientAt(network, options = {}) {
    const tidings = new Tidings("http://a.test/", {
      ...network,
      backoff: { baseMs: 1, capMs: 5 },
      ...options,
    });
    const seen = { publications: [], errors: [] };
    tidings.on("publication", (p) => seen.publications.push(p));
    tidings.on("error", (e) => seen.errors.push(e));
    clients.push(tidings);
    return { tidings, seen };
  }

  for (const transport of ["ws", "sse", "longpoll"]) {
    test(`${transport}: a channel served by another node is received from it, resumed`, async () => {
      const { a, b, network } = ring();
      a.owners.set("doc:9", "http://b.test/");
      b.publish("doc:9", "before");
      b.publish("doc:9", "missed");
      const { tidings, seen } = clientAt(network, { transports: [transport] });
      tidings.subscribe("doc:9", { since: { epoch: "EB", offset: 1 } });
      tidings.subscribe("room:1"); // served by a, where it stays
      tidings.connect();
      await until(() => seen.publications.length === 1, "the missed publication");
      b.publish("doc:9", "live");
      a.publish("room:1", "here");
      await until(() => seen.publications.length === 3, "live publications of both nodes");
      assert.deepEqual(
        seen.publications.map((p) => `${p.channel}:${p.data}`).sort(),
        ["doc:9:live", "doc:9:missed", "room:1:here"],
      );
      assert.deepEqual(tidings.positions()["doc:9"], { epoch: "EB", offset: 3 });
      assert.equal(tidings.positions()["room:1"].offset, 1);
      assert.deepEqual(seen.errors, []);
      if (transport !== "ws") {
        // The 307 named no channel: the client asked a where each one is served.
        assert.ok(a.requests.some((r) => r.url.pathname === "/route"));
      }
    });
  }

  test("a publish, history or presence of another node's channel is answered by it", async () => {
    const { a, b, network } = ring();
    a.owners.set("doc:9", "http://b.test/");
    const { tidings } = clientAt(network, { transports: ["ws"] });
    tidings.connect();
    const published = await tidings.publish("doc:9", "hello");
    const history = await tidings.history("doc:9");
    const clients = await tidings.presence("doc:9");
    assert.deepEqual(published, { epoch: "EB", offset: 1 });
    assert.deepEqual(history.publications.map((p) => p.data), ["hello"]);
    assert.deepEqual(clients, { c1: { user: "ann" } });
    assert.deepEqual(a.log("doc:9"), []); // a never published it
  });

  test("a publish of a channel held at another node goes straight to its connection", async () => {
    const { a, b, network } = ring();
    a.owners.set("doc:9", "http://b.test/");
    const { tidings } = clientAt(network, { transports: ["ws"] });
    tidings.subscribe("doc:9");
    tidings.connect();
    await until(() => b.sockets.some((s) => s.subscriptions.has("doc:9")), "a subscribe at b");
    await tidings.publish("doc:9", "hello");
    const sentToA = a.sockets.flatMap((s) => s.sent).map((c) => c.op);
    assert.ok(!sentToA.includes("publish"), sentToA);
    assert.deepEqual(b.log("doc:9").map((p) => p.data), ["hello"]);
  });

  test("a connection closed with 4503 and a url reconnects there with its positions", async () => {
    const { a, b, network } = ring();
    a.publish("user:1", "at a");
    const { tidings, seen } = clientAt(network, { transports: ["ws"] });
    tidings.subscribe("user:1", { since: { epoch: "E1", offset: 0 } });
    tidings.connect();
    await until(() => seen.publications.length === 1, "the publication at a");
    a.sockets[0].serverClose(4503, "moved", true, 0, "ws://b.test/ws");
    await until(() => b.sockets.some((s) => s.subscriptions.has("user:1")), "a subscribe at b");
    const resumed = b.sockets.flatMap((s) => s.sent).find((c) => c.op === "subscribe");
    assert.deepEqual(resumed.since, { epoch: "E1", offset: 1 });
    assert.equal(tidings.url, "http://b.test/");
  });

  for (const transport of ["ws", "sse"]) {
    test(`${transport}: nodes that send a channel back and forth are given up after five`, async () => {
      const { a, b, network } = ring();
      a.owners.set("doc:9", "http://b.test/");
      b.owners.set("doc:9", "http://a.test/");
      const { tidings, seen } = clientAt(network, { transports: [transport] });
      tidings.subscribe("doc:9");
      tidings.connect();
      await until(() => seen.errors.length === 1, "the error");
      assert.equal(seen.errors[0].code, "too_many_redirects");
      assert.equal(seen.errors[0].channel, "doc:9");
      assert.deepEqual(tidings.positions(), {});
    });
  }

  /** What `server` was asked about `channel`: one `since` ("epoch:offset", or null) per ask. */
  function asks(server, channel) {
    const overWs = server.sockets
      .flatMap((socket) => socket.sent)
      .filter((command) => command.op === "subscribe" && command.channel === channel)
      .map((command) => (command.since ? `${command.since.epoch}:${command.since.offset}` : null));
    const overHttp = server.requests
      .filter((request) => /\/(sse|poll)$/.test(request.url.pathname))
      .filter((request) => request.url.searchParams.getAll("channel").includes(channel))
      .map((request) => {
        const index = request.url.searchParams.getAll("channel").indexOf(channel);
        return request.url.searchParams.getAll("since")[index] ?? null;
      });
    return [...overWs, ...overHttp];
  }

  /** How many of the client's connections `server` holds subscribed (a long poll: waiting). */
  function held(server) {
    const sockets = server.sockets.filter((s) => s.readyState === 1 && s.subscriptions.size);
    return sockets.length + server.streams.size + server.waiters.size;
  }

  for (const transport of ["ws", "sse", "longpoll"]) {
    test(`${transport}: channels at an owner that died go back to the first node after 3 tries`, async () => {
      const { a, b, network } = ring();
      a.owners.set("doc:9", "http://b.test/");
      b.publish("doc:9", "at b");
      const { tidings, seen } = clientAt(network, { transports: [transport] });
      const gaps = [];
      tidings.on("gap", (g) => gaps.push(g));
      tidings.subscribe("doc:9", { since: { epoch: "EB", offset: 0 } });
      tidings.connect();
      await until(() => seen.publications.length === 1, "the publication at b");
      await until(() => held(b) === 1, "the connection held at b");
      a.owners.delete("doc:9"); // the ring changed: a serves it now
      b.kill();
      await until(() => asks(a, "doc:9").length >= 2, "the channel asked at a again");
      // Three connections to b that never opened, and no more: nothing is left there.
      assert.equal(b.refusedConnections, 3);
      assert.deepEqual(asks(a, "doc:9").slice(0, 2), ["EB:0", "EB:1"]); // with its position
      await until(() => gaps.length === 1, "the gap a tells");
      assert.deepEqual(gaps[0].since, { epoch: "EB", offset: 1 });
      a.publish("doc:9", "at a");
      await until(() => seen.publications.length === 2, "the publication at a");
      assert.deepEqual(seen.publications.map((p) => p.data), ["at b", "at a"]);
      assert.deepEqual(tidings.positions(), { "doc:9": { epoch: "E1", offset: 1 } });
      assert.deepEqual(seen.errors, []);
    });

    test(`${transport}: a connection that opened starts the owner's count afresh`, async () => {
      const { a, b, network } = ring();
      a.owners.set("doc:9", "http://b.test/");
      b.refuseNext = 2;
      const { tidings, seen } = clientAt(network, { transports: [transport] });
      tidings.subscribe("doc:9");
      tidings.connect();
      await until(() => b.refusedConnections === 2 && held(b) === 1, "held at b after two refusals");
      b.publish("doc:9", "one");
      await until(() => seen.publications.length === 1, "the first publication at b");
      await until(() => held(b) === 1, "the connection held at b");
      b.refuseNext = 2;
      b.cutConnections();
      await until(() => b.refusedConnections === 4 && held(b) === 1, "held again after two more");
      b.publish("doc:9", "two");
      await until(() => seen.publications.length === 2, "the second publication at b");
      // Four refusals, but never three in a row: the channel never went back to a.
      assert.equal(asks(a, "doc:9").length, 1);
      assert.deepEqual(seen.errors, []);
    });

    test(`${transport}: going back to the first node is not counted as a redirect`, async () => {
      const { a, b, network } = ring();
      a.owners.set("doc:9", "http://b.test/"); // and the ring goes on naming b, dead
      b.kill();
      const { tidings, seen } = clientAt(network, { transports: [transport] });
      tidings.subscribe("doc:9", { since: { epoch: "E1", offset: 0 } });
      tidings.connect();
      // Sent to b and back seven times: more than five redirects, were they counted.
      await until(() => asks(a, "doc:9").length >= 7, "seven rounds between a and b");
      assert.deepEqual(seen.errors, []);
      a.owners.delete("doc:9");
      await until(() => held(a) === 1, "held at a once the ring changed");
      a.publish("doc:9", "at a");
      await until(() => seen.publications.length === 1, "the publication at a");
      // Every round resumed from the position given (a later poll carries its cursor).
      const resumed = asks(a, "doc:9").filter((since) => since !== null);
      assert.deepEqual(new Set(resumed), new Set(["E1:0"]));
      assert.deepEqual(seen.errors, []);
    });
  }

  test("a connection sent by a 4503 to a node that died goes back to the first node", async () => {
    const { a, b, network } = ring();
    a.publish("user:1", "at a");
    b.kill();
    const { tidings, seen } = clientAt(network, { transports: ["ws"] });
    tidings.subscribe("user:1", { since: { epoch: "E1", offset: 0 } });
    tidings.connect();
    await until(() => seen.publications.length === 1, "the publication at a");
    a.sockets[0].serverClose(4503, "moved", true, 0, "ws://b.test/ws");
    await until(() => asks(a, "user:1").length === 2, "the channel asked at a again");
    assert.equal(b.refusedConnections, 3);
    assert.deepEqual(asks(a, "user:1"), ["E1:0", "E1:1"]);
    assert.equal(tidings.url, "http://a.test/");
  });
});
