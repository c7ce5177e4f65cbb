// Unit tests of the pure rules (core.js): run with `node --test clients/js/`.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import {
  Backoff,
  MAX_REDIRECTS,
  MAX_SERVER_DELAY_MS,
  OWNER_UNREACHABLE_ATTEMPTS,
  PositionTracker,
  SseParser,
  TidingsError,
  TransportRoute,
  baseUrl,
  catchUp,
  checkChannel,
  closeAction,
  httpAction,
  isTokenExpiring,
  newKey,
  nodeBase,
  parseWsFrame,
  pollUrl,
  Redirects,
  renewInMs,
  resumeParams,
  serverDelayMs,
  sseUrl,
  tokenExpiresAtMs,
  UnansweredConnections,
  wsUrl,
} from "./core.js";

const pub = (channel, epoch, offset, data = offset) => ({ channel, epoch, offset, data, ts: 1 });
const delivered = (events) =>
  events.filter((e) => e.type === "publication").map((e) => e.publication.offset);
const gaps = (events) => events.filter((e) => e.type === "gap");

describe("Backoff", () => {
  test("the ceiling doubles from the base up to the cap, with full jitter below it", () => {
    const backoff = new Backoff({ baseMs: 100, capMs: 1000, random: () => 1 });
    const delays = Array.from({ length: 6 }, () => backoff.nextDelayMs());
    assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000]);
  });

  test("full jitter draws anywhere from zero to the ceiling", () => {
    const backoff = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0 });
    assert.equal(backoff.nextDelayMs(), 0);
    const half = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0.5 });
    half.nextDelayMs();
    assert.equal(half.nextDelayMs(), 100);
  });

  test("reset starts again from the base", () => {
    const backoff = new Backoff({ baseMs: 100, capMs: 1000, random: () => 1 });
    backoff.nextDelayMs();
    backoff.nextDelayMs();
    backoff.reset();
    assert.equal(backoff.nextDelayMs(), 100);
  });

  test("a huge attempt count does not overflow past the cap", () => {
    const backoff = new Backoff({ baseMs: 100, capMs: 1000, random: () => 1 });
    backoff.attempt = 5000;
    assert.equal(backoff.nextDelayMs(), 1000);
  });
});

// The table the server's rule is tested against too (tests/core/test_catchup.py).
const CATCHUP_CASES = JSON.parse(
  readFileSync(new URL("../catchup_cases.json", import.meta.url)),
).cases;
const position = ([epoch, offset]) => ({ epoch, offset });

describe("the live catch-up rule", () => {
  test("catchUp gives the server's outcome for every shared case", () => {
    for (const c of CATCHUP_CASES) {
      const held = c.held && position(c.held);
      assert.equal(catchUp(held, position(c.publication), new Set(c.left)), c.outcome, c.why);
    }
  });

  test("the tracker delivers, drops, or tells a gap by the shared cases", () => {
    for (const c of CATCHUP_CASES) {
      const tracker = new PositionTracker();
      tracker.add("room:1");
      for (const epoch of [...c.left].sort()) {
        tracker.receiveSubscribed("room:1", { epoch, offset: 1 }, false);
      }
      if (c.held) tracker.receiveSubscribed("room:1", position(c.held), false);
      const [epoch, offset] = c.publication;
      const publication = pub("room:1", epoch, offset);
      const events = tracker.receivePublication(publication);
      const told = { type: "publication", publication };
      if (c.outcome === "already_had") {
        assert.deepEqual(events, [], c.why);
        assert.deepEqual(tracker.position("room:1"), c.held && position(c.held), c.why);
        continue;
      }
      const gap = {
        type: "gap",
        channel: "room:1",
        since: c.held && position(c.held),
        position: { epoch, offset: offset - 1 },
      };
      assert.deepEqual(events, c.outcome === "deliver" ? [told] : [gap, told], c.why);
      assert.deepEqual(tracker.position("room:1"), { epoch, offset }, c.why);
    }
  });
});

describe("PositionTracker", () => {
  test("publications in order are delivered once each", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1");
    assert.deepEqual(tracker.receiveSubscribed("room:1", { epoch: "e", offset: 3 }, false), []);
    const events = [4, 5, 4, 5, 6].flatMap((o) => tracker.receivePublication(pub("room:1", "e", o)));
    assert.deepEqual(delivered(events), [4, 5, 6]);
    assert.deepEqual(tracker.positions(), { "room:1": { epoch: "e", offset: 6 } });
  });

  test("recovered false without a given position is not a gap", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1");
    assert.deepEqual(tracker.receiveSubscribed("room:1", { epoch: "e", offset: 9 }, false), []);
    assert.deepEqual(tracker.position("room:1"), { epoch: "e", offset: 9 });
  });

  test("recovered false with a given position is a gap to the server's position", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "old", offset: 7 });
    const events = tracker.receiveSubscribed("room:1", { epoch: "new", offset: 2 }, false);
    assert.deepEqual(events, [
      {
        type: "gap",
        channel: "room:1",
        since: { epoch: "old", offset: 7 },
        position: { epoch: "new", offset: 2 },
      },
    ]);
    assert.deepEqual(tracker.position("room:1"), { epoch: "new", offset: 2 });
  });

  test("a recovered resume replays exactly what followed the position", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "e", offset: 7 });
    assert.deepEqual(tracker.receiveSubscribed("room:1", { epoch: "e", offset: 9 }, true), []);
    const events = [7, 8, 9].flatMap((o) => tracker.receivePublication(pub("room:1", "e", o)));
    assert.deepEqual(delivered(events), [8, 9]);
  });

  test("a jump ahead is delivered after a gap event", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "e", offset: 1 });
    const events = tracker.receivePublication(pub("room:1", "e", 5));
    assert.deepEqual(gaps(events)[0].since, { epoch: "e", offset: 1 });
    assert.deepEqual(gaps(events)[0].position, { epoch: "e", offset: 4 });
    assert.deepEqual(delivered(events), [5]);
  });

  test("a publication of an epoch the channel left is dropped", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "old", offset: 3 });
    tracker.receivePublication(pub("room:1", "new", 1));
    assert.deepEqual(tracker.receivePublication(pub("room:1", "old", 4)), []);
  });

  test("a position behind the held one never moves it backwards", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "e", offset: 9 });
    assert.deepEqual(tracker.receiveSubscribed("room:1", { epoch: "e", offset: 4 }, false), []);
    assert.deepEqual(tracker.position("room:1"), { epoch: "e", offset: 9 });
  });

  test("publications of channels not tracked are ignored", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1");
    tracker.remove("room:1");
    assert.deepEqual(tracker.receivePublication(pub("room:1", "e", 1)), []);
    assert.deepEqual(tracker.channels, []);
  });

  test("switching transport keeps one sequence without duplicates", () => {
    // WebSocket delivers 1..3, then SSE resumes from 3 and replays 3 (overlap) and 4.
    const tracker = new PositionTracker();
    tracker.add("room:1");
    tracker.receiveSubscribed("room:1", { epoch: "e", offset: 0 }, false);
    const ws = [1, 2, 3].flatMap((o) => tracker.receivePublication(pub("room:1", "e", o)));
    tracker.receiveSubscribed("room:1", { epoch: "e", offset: 4 }, true);
    const sse = [3, 4].flatMap((o) => tracker.receivePublication(pub("room:1", "e", o)));
    assert.deepEqual([...delivered(ws), ...delivered(sse)], [1, 2, 3, 4]);
  });

  test("a poll page that was not recovered tells a gap for the quiet channel it asked", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "e", offset: 3 });
    const events = tracker.receivePage([], false, { "room:1": { epoch: "e", offset: 3 } });
    assert.deepEqual(gaps(events), [
      { type: "gap", channel: "room:1", since: { epoch: "e", offset: 3 }, position: null },
    ]);
    assert.equal(tracker.position("room:1"), null);
    // The channel then continues from the next publication the cursor brings.
    assert.deepEqual(delivered(tracker.receivePublication(pub("room:1", "f", 1))), [1]);
  });

  test("a recovered poll page tells no gap and drops repeats", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "e", offset: 3 });
    const page = [pub("room:1", "e", 3), pub("room:1", "e", 4)];
    const events = tracker.receivePage(page, true, { "room:1": { epoch: "e", offset: 3 } });
    assert.deepEqual(delivered(events), [4]);
    assert.deepEqual(gaps(events), []);
  });

  test("a poll page with a channel asked without position tells no gap of the others", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "e", offset: 3 });
    tracker.add("room:2");
    const asked = { "room:1": { epoch: "e", offset: 3 }, "room:2": null };
    assert.deepEqual(tracker.receivePage([], false, asked), []);
  });

  test("a 1.1 poll page's positions tell which channel had a gap, and where it is", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1", { epoch: "e", offset: 3 });
    tracker.add("room:2", { epoch: "e", offset: 5 });
    const asked = { "room:1": { epoch: "e", offset: 3 }, "room:2": { epoch: "e", offset: 5 } };
    const positions = {
      "room:1": { epoch: "e", offset: 4, recovered: true },
      "room:2": { epoch: "e", offset: 9, recovered: false },
    };
    const events = tracker.receivePage([pub("room:1", "e", 4)], false, asked, positions);
    assert.deepEqual(gaps(events), [
      {
        type: "gap",
        channel: "room:2",
        since: { epoch: "e", offset: 5 },
        position: { epoch: "e", offset: 9 },
      },
    ]);
    assert.deepEqual(delivered(events), [4]);
    assert.deepEqual(tracker.positions(), {
      "room:1": { epoch: "e", offset: 4 },
      "room:2": { epoch: "e", offset: 9 },
    });
  });

  test("a 1.1 poll page starts a channel asked without position where it says", () => {
    const tracker = new PositionTracker();
    tracker.add("room:1");
    const positions = { "room:1": { epoch: "e", offset: 7, recovered: false } };
    assert.deepEqual(tracker.receivePage([], false, { "room:1": null }, positions), []);
    assert.deepEqual(tracker.position("room:1"), { epoch: "e", offset: 7 });
  });

  test("invalid channel names are refused", () => {
    assert.throws(() => new PositionTracker().add("room 1"), TidingsError);
    assert.throws(() => checkChannel(""), /invalid channel/);
    assert.equal(checkChannel("a-Z_0:.@/="), "a-Z_0:.@/=");
  });
});

describe("TransportRoute", () => {
  test("auto moves down at once while no transport has worked", () => {
    const route = new TransportRoute(["ws", "sse", "longpoll"]);
    assert.equal(route.receiveFailure("reconnect", false), false);
    assert.equal(route.current, "sse");
    assert.equal(route.receiveFailure("refused", false), false);
    assert.equal(route.current, "longpoll");
    assert.equal(route.receiveFailure("refused", false), true); // all failed: wait
    assert.equal(route.current, "ws");
  });

  test("a transport that connected is kept across later failures", () => {
    const route = new TransportRoute(["ws", "sse", "longpoll"]);
    assert.equal(route.receiveFailure("reconnect", true), true);
    assert.equal(route.current, "ws");
    assert.equal(route.receiveFailure("reconnect", false), true);
    assert.equal(route.current, "ws");
  });

  test("an unreachable server sends a client that kept nothing back to the top", () => {
    const route = new TransportRoute(["ws", "sse", "longpoll"]);
    route.receiveFailure("reconnect", false);
    assert.equal(route.receiveFailure("unreachable", false), true);
    assert.equal(route.current, "ws");
  });

  test("a refused transport is left even when it had been kept", () => {
    const route = new TransportRoute(["ws", "sse"]);
    route.receiveFailure("reconnect", true);
    assert.equal(route.receiveFailure("refused", false), false);
    assert.equal(route.current, "sse");
  });

  test("a single transport always stays and waits", () => {
    const route = new TransportRoute(["sse"]);
    assert.equal(route.receiveFailure("refused", false), true);
    assert.equal(route.current, "sse");
  });

  test("unknown transports are refused", () => {
    assert.throws(() => new TransportRoute(["carrier-pigeon"]), /unknown transport/);
    assert.throws(() => new TransportRoute([]), /no transport/);
  });
});

describe("close codes and HTTP answers", () => {
  test("close codes follow docs/protocol.md §3", () => {
    assert.equal(closeAction(1001), "reconnect");
    assert.equal(closeAction(1012), "reconnect");
    assert.equal(closeAction(1006), "reconnect");
    assert.equal(closeAction(4500), "reconnect");
    assert.equal(closeAction(4503), "reconnect");
    assert.equal(closeAction(4001), "unauthorized");
    assert.equal(closeAction(4003), "stop");
    assert.equal(closeAction(4499), "stop");
  });

  test("an HTTP error that is not a tidings error means the transport is not served", () => {
    assert.equal(httpAction(404, null), "refused");
    assert.equal(httpAction(403, null), "refused");
    assert.equal(httpAction(502, null), "reconnect");
  });

  test("tidings errors decide by their code", () => {
    assert.equal(httpAction(401, "unauthorized"), "unauthorized");
    assert.equal(httpAction(503, "unavailable"), "reconnect");
    assert.equal(httpAction(429, "too_many_requests"), "reconnect");
    assert.equal(httpAction(403, "permission_denied"), "stop");
    assert.equal(httpAction(400, "bad_request"), "stop");
  });
});

describe("URLs", () => {
  test("the base URL is resolved against the page and ends in a slash", () => {
    assert.equal(baseUrl("/", "http://h:1/demo?x=1"), "http://h:1/");
    assert.equal(baseUrl(undefined, "http://h:1/app/demo"), "http://h:1/app/");
    assert.equal(baseUrl("ws://h:1/rt", undefined), "http://h:1/rt/");
    assert.equal(wsUrl("https://h/rt/"), "wss://h/rt/ws");
    assert.equal(wsUrl("http://h:1/"), "ws://h:1/ws");
  });

  test("SSE resumes with since= per channel, in order, unknown ones from now", () => {
    const { url, asked } = sseUrl("http://h/", ["room:1", "room:2"], {
      "room:2": { epoch: "e", offset: 4 },
    });
    const params = new URL(url).searchParams;
    assert.deepEqual(params.getAll("channel"), ["room:1", "room:2"]);
    assert.deepEqual(params.getAll("since"), ["unknown-position:0", "e:4"]);
    assert.deepEqual(asked, { "room:1": null, "room:2": { epoch: "e", offset: 4 } });
  });

  test("a node's base URL is read from its /ws URL or from a redirect's Location", () => {
    assert.equal(nodeBase("wss://b.example:8443/ws"), "https://b.example:8443/");
    assert.equal(nodeBase("http://b:1/rt/sse?channel=doc%3A9&since=e:1"), "http://b:1/rt/");
    assert.equal(nodeBase("http://b:1/rt/poll"), "http://b:1/rt/");
    assert.equal(nodeBase("http://b:1"), "http://b:1/");
  });

  test("without any position nothing is resumed", () => {
    assert.deepEqual(resumeParams(["a"], {})[0], []);
  });

  test("a poll uses its cursor when it has one, and waits when long", () => {
    const { url } = pollUrl("http://h/", ["room:1"], { "room:1": { epoch: "e", offset: 1 } }, "CUR", 25);
    const params = new URL(url).searchParams;
    assert.equal(params.get("cursor"), "CUR");
    assert.equal(params.get("since"), null);
    assert.equal(params.get("wait"), "25");
    const short = new URL(pollUrl("http://h/", ["room:1"], {}, null, 0).url).searchParams;
    assert.equal(short.get("wait"), null);
  });
});

describe("WebSocket frames", () => {
  test("replies, errors and pushes are told apart", () => {
    assert.deepEqual(parseWsFrame('{"id":1,"result":{"a":1}}'), {
      kind: "reply",
      id: 1,
      result: { a: 1 },
    });
    const error = parseWsFrame('{"id":2,"error":{"code":"permission_denied","message":"no"}}');
    assert.equal(error.error.code, "permission_denied");
    assert.deepEqual(parseWsFrame('{"push":"ping"}'), { kind: "ping" });
    const frame = parseWsFrame(
      '{"push":"pub","channel":"c","epoch":"e","offset":3,"data":{"t":1},"ts":5,"info":{"client":"x","user":"u"}}',
    );
    assert.deepEqual(frame.publication, {
      channel: "c",
      epoch: "e",
      offset: 3,
      data: { t: 1 },
      ts: 5,
      info: { client: "x", user: "u" },
    });
    const goodbye = parseWsFrame('{"push":"disconnect","code":1001,"reason":"bye","reconnect":true}');
    assert.equal(goodbye.reconnect, true);
    assert.equal(goodbye.delay, null);
    const drained = parseWsFrame('{"push":"disconnect","code":1001,"reconnect":true,"delay":2500}');
    assert.equal(drained.delay, 2500);
    assert.equal(parseWsFrame('{"push":"join","channel":"c","client":"k","user":"u"}').kind, "join");
  });

  test("a server's reconnect delay is followed up to a bound, and nonsense is ignored", () => {
    assert.equal(serverDelayMs(0), 0);
    assert.equal(serverDelayMs(1500), 1500);
    assert.equal(serverDelayMs(1e12), MAX_SERVER_DELAY_MS);
    for (const nonsense of [undefined, null, -1, "5", Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.equal(serverDelayMs(nonsense), null);
    }
  });

  test("what is not a frame is a protocol error", () => {
    assert.throws(() => parseWsFrame("nope"), { code: "protocol" });
    assert.throws(() => parseWsFrame("[1]"), { code: "protocol" });
    assert.throws(() => parseWsFrame('{"push":"pub","channel":"c"}'), { code: "protocol" });
    assert.throws(() => parseWsFrame('{"push":"mystery"}'), { code: "protocol" });
  });
});

describe("SseParser", () => {
  test("events, ids and comments, across chunk boundaries", () => {
    const parser = new SseParser();
    const out = [
      ...parser.feed("retry: 2000\nid: C1\nevent: subscr"),
      ...parser.feed('ibed\ndata: {"channels":{}}\n\n: ping\n\nid: C2\nevent: pub\nda'),
      ...parser.feed('ta: {"offset":1}\n\n'),
    ];
    assert.deepEqual(out, [
      { event: "subscribed", data: '{"channels":{}}', id: "C1" },
      { comment: "ping" },
      { event: "pub", data: '{"offset":1}', id: "C2" },
    ]);
  });

  test("CRLF line endings, even split between chunks, and multi-line data", () => {
    const parser = new SseParser();
    const out = [...parser.feed("data: a\r"), ...parser.feed("\ndata: b\r\n\r\n")];
    assert.deepEqual(out, [{ event: "message", data: "a\nb", id: null }]);
  });

  test("an event without data is not dispatched", () => {
    assert.deepEqual(new SseParser().feed("event: pub\n\n"), []);
  });
});

describe("tokens and keys", () => {
  const jwt = (claims) =>
    `h.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.s`;

  test("the expiry of a JWT is read from its payload", () => {
    assert.equal(tokenExpiresAtMs(jwt({ sub: "ann", exp: 100 })), 100000);
    assert.equal(tokenExpiresAtMs(jwt({ sub: "ann" })), null);
    assert.equal(tokenExpiresAtMs("not-a-jwt"), null);
    assert.equal(tokenExpiresAtMs("a.!!!.c"), null);
  });

  test("a token is refreshed shortly before it expires, never without exp", () => {
    const token = jwt({ exp: 100 });
    assert.equal(isTokenExpiring(token, 50000, 30000), false);
    assert.equal(isTokenExpiring(token, 75000, 30000), true);
    assert.equal(isTokenExpiring(jwt({}), 1e15), false);
  });

  test("a connection renews its token a quarter of its time before expiry, within bounds", () => {
    // The same table as the Python client's tests (tests/client/test_tokens.py).
    const { cases } = JSON.parse(readFileSync(new URL("./token_renewal_cases.json", import.meta.url)));
    for (const [leftS, renewS] of cases) {
      assert.ok(Math.abs(renewInMs(1000 + leftS, 1000000) - renewS * 1000) < 1e-6, `${leftS} s left`);
    }
  });

  test("idempotency keys are 20 URL-safe characters", () => {
    assert.match(newKey(), /^[A-Za-z0-9]{20}$/);
    assert.notEqual(newKey(), newKey());
  });
});

describe("Redirects", () => {
  test("a channel may be redirected five times in a row, and again after it was served", () => {
    const redirects = new Redirects();
    for (let hop = 1; hop <= MAX_REDIRECTS; hop += 1) assert.equal(redirects.receiveMoved("a"), true);
    assert.equal(redirects.receiveMoved("a"), false);
    assert.equal(redirects.receiveMoved("b"), true); // counted per channel
    redirects.receiveServed("a");
    assert.equal(redirects.receiveMoved("a"), true);
  });
});

describe("UnansweredConnections", () => {
  test("three connections in a row that never opened, and only in a row", () => {
    const unanswered = new UnansweredConnections();
    assert.equal(OWNER_UNREACHABLE_ATTEMPTS, 3);
    assert.equal(unanswered.receiveEnd("reconnect", false), false); // a WebSocket never opened
    assert.equal(unanswered.receiveEnd("unreachable", false), false); // a fetch that failed
    assert.equal(unanswered.receiveEnd("reconnect", true), false); // opened: the count restarts
    assert.equal(unanswered.receiveEnd("unreachable", false), false);
    assert.equal(unanswered.receiveEnd("refused", false), false);
    assert.equal(unanswered.receiveEnd("unreachable", false), true);
    unanswered.reset();
    assert.equal(unanswered.receiveEnd("unreachable", false), false);
  });

  test("an answer that is not a connection, or a session given up early, is not counted", () => {
    const unanswered = new UnansweredConnections();
    unanswered.receiveEnd("unreachable", false);
    unanswered.receiveEnd("unreachable", false);
    for (const outcome of ["moved", "unauthorized", "restart", "retry", "closed"]) {
      assert.equal(unanswered.receiveEnd(outcome, false), false, outcome);
    }
    assert.equal(unanswered.count, 2);
  });
});
