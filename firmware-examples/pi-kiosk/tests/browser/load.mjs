// Load test: N = 2 x pool concurrent clients, several rounds. Some get 503
// with Retry-After; every accepted stream must end with its "done" event; the
// server must not crash; its resident memory (VmRSS) is sampled idle and under
// load. Prints a summary and writes it to out/load.json.
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { startServer, rssKiB, check } from "./server.mjs";
import { fileURLToPath } from "node:url";
const here = fileURLToPath(new URL(".", import.meta.url));

const pool = Number(process.env.KIOSK_POOL || 4);
const clients = 2 * pool;
const rounds = Number(process.env.KIOSK_ROUNDS || 3);
const outDir = resolve(process.env.KIOSK_OUT || join(here, "out"));
mkdirSync(outDir, { recursive: true });

const server = await startServer(`sessions = ${pool}\npace_ms = 15\ndefault_tokens = 80`);
try {
  const health = async () => (await fetch(server.url + "/healthz")).json();
  await new Promise((ok) => setTimeout(ok, 300));
  const idleKiB = rssKiB(server.pid);
  const info = await health();

  const peakKiB = { ...idleKiB };
  const sampler = setInterval(() => {
    const now = rssKiB(server.pid);
    for (const k of Object.keys(peakKiB)) peakKiB[k] = Math.max(peakKiB[k], now[k]);
  }, 50);

  async function client(i) {
    const domain = i % 2 ? "recipe" : "story";
    const r = await fetch(server.url + "/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ domain }),
    });
    if (r.status === 503) {
      const body = await r.json();
      return { status: 503, retryAfter: r.headers.get("retry-after"), message: body.error };
    }
    const text = await r.text();
    return { status: r.status, done: text.includes("event: done"), failed: text.includes("event: error"), bytes: text.length };
  }

  const results = [];
  const t0 = Date.now();
  for (let round = 0; round < rounds; round++) {
    const got = await Promise.all(Array.from({ length: clients }, (_, i) => client(i)));
    results.push(...got);
  }
  const ms = Date.now() - t0;
  clearInterval(sampler);
  await new Promise((ok) => setTimeout(ok, 300));
  const afterKiB = rssKiB(server.pid);
  const end = await health();

  const accepted = results.filter((r) => r.status === 200);
  const rejected = results.filter((r) => r.status === 503);
  const summary = {
    pool, clients, rounds, requests: results.length, ms,
    accepted: accepted.length, completed: accepted.filter((r) => r.done).length,
    rejected_503: rejected.length, other: results.length - accepted.length - rejected.length,
    retry_after: [...new Set(rejected.map((r) => r.retryAfter))],
    arena_bytes_per_session: info.arena_bytes, context: info.context, kernels: info.kernels,
    rss_kib: { idle: idleKiB, peak_under_load: peakKiB, after: afterKiB },
    server: { completed: end.completed, rejected_busy: end.rejected_busy, busy_after: end.busy },
  };
  console.log(JSON.stringify(summary, null, 2));
  writeFileSync(join(outDir, "load.json"), JSON.stringify(summary, null, 2) + "\n");

  check(summary.other === 0, "only 200 and 503 answers");
  check(rejected.length > 0, "a full pool answers 503");
  check(rejected.every((r) => r.retryAfter && r.message), "every 503 has Retry-After and a message");
  check(accepted.length >= pool, "at least a pool's worth accepted");
  check(accepted.every((r) => r.done && !r.failed), "every accepted request completed");
  check(end.busy === 0, "every session is free again");
  check(server.exited() === null, "the server did not crash");
  console.log(`load test: OK (VmRSS idle ${idleKiB.rss} KiB, peak under load ${peakKiB.rss} KiB; ` +
    `${accepted.length} accepted and completed, ${rejected.length} answered 503; summary in ${join(outDir, "load.json")})`);
} finally {
  const exit = await server.stop();
  check(exit.code === 0, `the server stopped cleanly on SIGTERM (${JSON.stringify(exit)})`);
}
