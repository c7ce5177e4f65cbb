// Type-checked against clients/js/tidings.d.ts by test_js_unit.py (tsc --strict).
import { Tidings, TidingsError, type Publication } from "./tidings.js";
const t = new Tidings("/", { transports: ["sse", "longpoll"], token: async ({ refresh }) => (refresh ? "a" : null) });
t.on("publication", (p: Publication) => console.log(p.channel, p.offset, p.data));
t.on("error", (e) => console.log(e.code, e.closeCode, e.channel));
t.on("state", ({ state, transport }) => console.log(state satisfies string, transport));
t.subscribe("room:1", { since: { epoch: "e", offset: 3 } });
t.connect().close();
async function f(): Promise<number> { const r = await t.history("room:1", { limit: 5 }); return r.publications[0].offset + (await t.publish("room:1", {a: 1})).offset; }
void f; void TidingsError;
// @ts-expect-error: an unknown event
t.on("nope", () => {});
