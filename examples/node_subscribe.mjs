// Subscribe to a tidings channel from Node (>= 20) with the JavaScript client.
//
//   npm install ws ./clients/js          # or: make js-pack; npm install ws ./dist/tidings-client-0.1.0.tgz
//   tidings serve &                      # a node on http://127.0.0.1:8000
//   node examples/node_subscribe.mjs room:45
//   tidings publish room:45 '{"text": "hi"}'
//
// Node 20 has no global WebSocket, so the `ws` package's class is passed explicitly;
// without it, the client throws (it does not fall back to SSE without a word). Node's
// global fetch serves SSE and polling. A node that requires tokens: TIDINGS_TOKEN=<jwt>.

import { WebSocket } from "ws";
import { Tidings } from "tidings-client";

const server = process.env.TIDINGS_SERVER ?? "http://127.0.0.1:8000";
const channels = process.argv.slice(2);
if (!channels.length) {
  console.error("usage: node examples/node_subscribe.mjs CHANNEL...");
  process.exit(2);
}

const tidings = new Tidings(server, { WebSocket, token: process.env.TIDINGS_TOKEN ?? null });
tidings.on("state", ({ state, transport }) => console.error(`${state} (${transport ?? "-"})`));
tidings.on("error", (error) => console.error(`error: ${error.code}: ${error.message}`));
tidings.on("gap", ({ channel }) => console.error(`gap in ${channel}: refetch its state`));
tidings.on("publication", (p) => console.log(JSON.stringify(p)));
for (const channel of channels) tidings.subscribe(channel);
tidings.connect();
process.on("SIGINT", () => {
  tidings.close();
  process.exit(0);
});
