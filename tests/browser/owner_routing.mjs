// The JavaScript client in Node against real nodes (tests/browser/test_js_owner_routing.py):
// subscribes `channel` at `url` over one transport, resuming after `since` (JSON) when
// given, and prints each publication, and each gap as `{"gap": ...}`, as a JSON line on
// stdout; what the client says (subscribed, errors) goes to stderr. Node 20 needs
// --experimental-websocket for "ws".
//
//   node owner_routing.mjs <url> <transport> <channel> [<since JSON>]

import { Tidings } from "../../clients/js/tidings.js";

const [url, transport, channel, since] = process.argv.slice(2);
const tidings = new Tidings(url, {
  transports: [transport],
  backoff: { baseMs: 50, capMs: 500 },
  pollIntervalMs: 50,
});
tidings.on("subscribed", (s) => console.error(`subscribed ${s.channel} ${s.recovered}`));
tidings.on("error", (e) => console.error(`error ${e.code}: ${e.message}`));
tidings.on("publication", (p) => console.log(JSON.stringify(p)));
tidings.on("gap", (gap) => console.log(JSON.stringify({ gap })));
tidings.subscribe(channel, since ? { since: JSON.parse(since) } : {});
tidings.connect();
