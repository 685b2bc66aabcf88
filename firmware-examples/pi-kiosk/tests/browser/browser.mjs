// The kiosk page in a real browser: Debian's Chromium (never a downloaded
// one) driven by playwright-core. Clicks "Tell me a story", checks that the
// text grows while it streams and then ends, does the same for a recipe,
// checks that bad input shows the server's message on the page, and saves
// screenshots (paths printed at the end).
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { startServer, check } from "./server.mjs";
import { fileURLToPath } from "node:url";
const here = fileURLToPath(new URL(".", import.meta.url));

const outDir = resolve(process.env.KIOSK_OUT || join(here, "out"));
mkdirSync(outDir, { recursive: true });

// a slow enough pace that streaming is visible, few enough tokens to be quick
const server = await startServer("sessions = 2\npace_ms = 40\ndefault_tokens = 60\nmax_prompt_bytes = 200");
const profile = mkdtempSync(join(tmpdir(), "edgelm-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 800, height: 480 },
    timeout: 60000,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(60000);
  await page.goto(server.url);
  const story = page.getByRole("button", { name: "Tell me a story" });
  const recipe = page.getByRole("button", { name: "Give me a recipe" });
  await page.waitForFunction(() => document.getElementById("temperature").value !== "");
  check(await story.isEnabled() && await recipe.isEnabled(), "both buttons are enabled with both domains loaded");

  // Streams: sample the text length until the stream says it is done.
  async function run(button, name) {
    await button.click();
    const lengths = [];
    const t0 = Date.now();
    for (;;) {
      const [len, done] = await page.evaluate(() =>
        [document.getElementById("output").textContent.length, document.body.dataset.done === "1"]);
      lengths.push(len);
      if (done) break;
      check(Date.now() - t0 < 60000, `${name}: no end within 60 s`);
      await page.waitForTimeout(100);
    }
    const growth = lengths.filter((l, i) => i > 0 && l > lengths[i - 1]).length;
    const prompt = await page.locator("#output .prompt").textContent();
    const text = await page.locator("#output").textContent();
    const status = await page.locator("#status").textContent();
    console.log(`${name}: ${lengths.length} samples over ${Date.now() - t0} ms, grew ${growth} times, ` +
      `${text.length} chars; ${status}`);
    check(growth >= 3, `${name}: the text grew while streaming (grew ${growth} times)`);
    check(text.length > prompt.length, `${name}: text after the prompt`);
    check(status.startsWith("The end"), `${name}: the page says it ended`);
    check(!(await page.locator("#error").isVisible()), `${name}: no error shown`);
    check(await button.isEnabled(), `${name}: buttons usable again`);
    return text;
  }
  const storyText = await run(story, "story");
  const storyShot = join(outDir, "story.png");
  await page.screenshot({ path: storyShot });
  await run(recipe, "recipe");
  const recipeShot = join(outDir, "recipe.png");
  await page.screenshot({ path: recipeShot });
  check(storyText.length > 0, "story text kept");

  // Bad input: the server's JSON message appears on the page.
  async function expectError(setup, needle, what) {
    await setup();
    await story.click();
    const error = page.locator("#error");
    await error.waitFor({ state: "visible" });
    const msg = await error.textContent();
    console.log(`${what}: page shows ${JSON.stringify(msg)}`);
    check(msg.includes(needle), `${what}: message mentions ${needle}`);
  }
  await expectError(() => page.fill("#temperature", "-1"), "temperature", "negative temperature");
  const errorShot = join(outDir, "error.png");
  await page.screenshot({ path: errorShot });
  await page.fill("#temperature", "0.8");
  await expectError(() => page.fill("#prompt", "x".repeat(300)), "200", "prompt over the byte limit");
  await page.fill("#prompt", "");

  // After the errors, a story still works (nothing is stuck).
  await run(story, "story again");
  const health = await (await fetch(server.url + "/healthz")).json();
  console.log("healthz:", JSON.stringify(health));
  check(health.busy === 0, "no session left busy");
  check(server.exited() === null, "the server is still running");
  console.log(`screenshots: ${storyShot} ${recipeShot} ${errorShot}`);
  console.log("browser test: OK");
} finally {
  if (context) await context.close().catch(() => {});
  await server.stop();
  rmSync(profile, { recursive: true, force: true });
}
