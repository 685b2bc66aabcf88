// Starts edgelm-kiosk for a test: a settings file in a fresh folder, port 0,
// and the port read from the server's first line. Shared by browser.mjs and load.mjs.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

// (import.meta.dirname needs Node 20.11; Debian 12 has 18)
const here = fileURLToPath(new URL(".", import.meta.url));

const root = resolve(here, "../../../..");

export function kioskBinary() {
  return process.env.KIOSK_BIN || join(root, "target/debug/edgelm-kiosk");
}

/** Starts the server with `settings` (TOML lines); resolves to { url, pid, proc, stop }. */
export async function startServer(settings) {
  const dir = mkdtempSync(join(tmpdir(), "edgelm-kiosk-"));
  const models = process.env.KIOSK_MODELS || join(root, "models");
  const config = join(dir, "kiosk.toml");
  writeFileSync(config, `models = ${JSON.stringify(models)}\nbind = "127.0.0.1:0"\n${settings}\n`);
  const proc = spawn(kioskBinary(), ["--config", config], { stdio: ["ignore", "pipe", "inherit"] });
  let exited = null;
  proc.on("exit", (code, signal) => { exited = { code, signal }; });
  const url = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("the server did not start within 60 s")), 60000);
    let buf = "";
    proc.stdout.on("data", (d) => {
      buf += d;
      const m = buf.match(/listening on (http:\/\/\S+)/);
      if (m) { clearTimeout(timer); ok(m[1]); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); fail(new Error(`the server exited with ${code}`)); });
  });
  return {
    url, pid: proc.pid, proc, dir,
    exited: () => exited,
    stop: () => new Promise((ok) => {
      if (exited) return ok(exited);
      proc.once("exit", (code, signal) => ok({ code, signal }));
      proc.kill("SIGTERM");
    }),
  };
}

/** Resident memory of `pid` in KiB: { rss: VmRSS, anon: RssAnon (heap,
 * arenas, stacks), file: RssFile (the mapped models and the binary) }. */
export function rssKiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name) => Number((status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m")) || [])[1]);
  return { rss: field("VmRSS"), anon: field("RssAnon"), file: field("RssFile") };
}

export function check(cond, msg) {
  if (!cond) throw new Error("check failed: " + msg);
}
