// Drives the Debian chromium against a running sidestream's admin page, step by step:
// the Rust test (tests/admin_page.rs) changes the world between steps and writes a line to
// stdin to go on; each step prints `ok <step>` once the page shows what it must.
//   node admin_page.mjs <admin url> <screenshot path> <instance>=<subscribers>...
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, screenshot, ...expected] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const WAIT = { timeout: 10000, polling: 100 };

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1720, height: 300 } });
  await page.goto(url);
  // Both instances with their subscriber counts.
  const counts = Object.fromEntries(expected.map((e) => e.split("=")).map(([k, v]) => [k, Number(v)]));
  await page.waitForFunction((counts) => Object.entries(counts).every(([instance, total]) => {
    const row = document.querySelector(`tr[data-instance="${instance}"] td.subscribers`);
    return row && Number(row.dataset.total) === total;
  }), counts, WAIT);
  console.log("ok counts");
  // A client disconnected: `<instance>=<subscribers>` on stdin.
  const gone = (await lines.next()).value.split("=");
  await page.waitForFunction(([instance, total]) => {
    const row = document.querySelector(`tr[data-instance="${instance}"] td.subscribers`);
    return row && Number(row.dataset.total) === Number(total);
  }, gone, WAIT);
  console.log("ok disconnect");
  // A backend failed: `<instance>` on stdin turns stale (any state but ok, shown in colour).
  const failing = (await lines.next()).value;
  await page.waitForFunction((instance) => {
    const row = document.querySelector(`tr[data-instance="${instance}"]`);
    return row && row.className !== "state-ok" && row.querySelector(".dot:not(.ok)");
  }, failing, WAIT);
  // The others stay healthy.
  const healthy = await page.$$eval("tr[data-instance]", (rows) => rows.filter((r) => r.className === "state-ok").length);
  if (healthy < 1) throw new Error("every instance turned stale");
  // ADMIN_PAGE_HOLD_MS: let the sparklines fill before the picture (for the README's one).
  await page.waitForTimeout(Number(process.env.ADMIN_PAGE_HOLD_MS || 0));
  await page.screenshot({ path: screenshot });
  console.log("ok stale");
} finally {
  await browser.close();
}
process.exit(0);
