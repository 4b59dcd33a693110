// /ui in real headless Chromium (Debian's `chromium`, driven by playwright-core from npm):
// the series browser finds a series sent a second earlier; the tap shows a line sent after it
// was opened; after a flood of new series the offender shows with its series budget named;
// the configuration marks what differs from the defaults. Screenshots go to $SCREENSHOTS.
//
// Run by crates/floodgate/tests/e2e/ui.rs with FLOODGATE_HTTP (host:port of [http]),
// FLOODGATE_STATSD (port of the StatsD UDP listener), SCREENSHOTS (a folder), CHROMIUM.
"use strict";
const { chromium } = require("playwright-core");
const dgram = require("dgram");
const assert = require("assert");

const base = `http://${process.env.FLOODGATE_HTTP}`;
const statsd = Number(process.env.FLOODGATE_STATSD);
const shots = process.env.SCREENSHOTS;
const id = Date.now().toString(36);

function send(from, lines) {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket("udp4");
    s.bind(0, from, () => s.send(lines.join("\n"), statsd, "127.0.0.1", e => { s.close(); e ? reject(e) : resolve(); }));
  });
}
const sleep = ms => new Promise(r => setTimeout(r, ms));

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    // Any name other than loopback fails to resolve and anything else goes to a proxy that does
    // not exist: the page must work with loopback alone.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const outside = [];
  page.on("request", r => { if (!r.url().startsWith(base)) outside.push(r.url()); });
  const step = async (name, f) => { process.stdout.write(`step: ${name}\n`); await f(); };

  await step("series browser: a series sent a second earlier", async () => {
    const name = `ui.browse.${id}`;
    await send("127.0.0.1", [`${name}:7|c`, `ui.other.${id}:1|g`]);
    await sleep(1000);
    await page.goto(`${base}/ui#series`);
    await page.fill("#seriesMatch", "ui.browse.*");
    await page.click("#seriesForm button");
    const row = page.locator(`tr[data-series="${name}"]`);
    await row.waitFor({ timeout: 10000 });
    const text = await row.innerText();
    assert.match(text, /counter/);
    assert.match(text, /\b7\b/);
    assert.match(text, /127\.0\.0\.1/, "its sender");
    assert.match(text, /s ago/, "first seen");
    assert.equal(await page.locator(`tr[data-series="ui.other.${id}"]`).count(), 0, "the glob leaves others out");
    assert.match(await page.innerText("#seriesCount"), /^1 of [\d,]+ series match/);
    await page.screenshot({ path: `${shots}/ui-series.png` });
  });

  await step("tap: a line sent after it was opened", async () => {
    await page.goto(`${base}/ui#tap`);
    await page.fill("#tapName", "ui.tap.*");
    await page.click("#tapStart");
    await page.waitForFunction(() => document.getElementById("tapState").textContent.startsWith("watching"), null, { timeout: 10000 });
    await send("127.0.0.1", [`ui.skip.${id}:1|c`, `ui.tap.${id}:3|ms`]);
    const row = page.locator(`tr[data-text="ui.tap.${id}:3|ms"]`);
    await row.waitFor({ timeout: 10000 });
    assert.match(await row.innerText(), /statsd_udp[\s\S]*127\.0\.0\.1[\s\S]*admitted/);
    assert.equal(await page.locator(`tr[data-text="ui.skip.${id}:1|c"]`).count(), 0, "filtered out");
    await page.screenshot({ path: `${shots}/ui-tap.png` });
    await page.click("#tapStop");
  });

  await step("a flood of new series: the offender, with its budget named", async () => {
    // 2,000 new series from 127.0.0.2 (its budget is 500), 100 datagrams of 20 lines, paced
    // under the per-source rate: this is about series, not lines.
    for (let d = 0; d < 100; d++) {
      await send("127.0.0.2", Array.from({ length: 20 }, (_, i) => `checkout.request.${id}-${d * 20 + i}:1|c`));
      await sleep(10);
    }
    await page.goto(`${base}/ui#overview`);
    const words = page.locator("#words li", { hasText: "127.0.0.2 is over its series budget" });
    await words.waitFor({ timeout: 20000 });
    const said = await words.innerText();
    assert.match(said, /500 live series/);
    assert.match(said, /series_per_source = 500/);
    assert.match(said, /1,500 new series refused/);
    assert.match(said, /mostly checkout\.request \(500\)/, "its top name prefix");
    await page.screenshot({ path: `${shots}/ui-overview.png`, fullPage: true });
    await page.goto(`${base}/ui#cardinality`);
    const sender = page.locator('tr[data-sender="127.0.0.2"]');
    await sender.waitFor({ timeout: 10000 });
    assert.match(await sender.innerText(), /500[\s\S]*over budget/);
    // The ids are in the names: each name is one series, their prefix holds all 500.
    const top = page.locator("#cardLivePrefixes tr", { hasText: "checkout.request" }).first();
    await top.waitFor({ timeout: 10000 });
    assert.match(await top.innerText(), /checkout\.request\s+500\b/);
    await page.screenshot({ path: `${shots}/ui-cardinality.png`, fullPage: true });
  });

  await step("configuration: what differs from the defaults is marked", async () => {
    await page.goto(`${base}/ui#config`);
    const changed = page.locator('tr.changed[data-key="limits.series_per_source"]');
    await changed.waitFor({ timeout: 10000 });
    assert.match(await changed.innerText(), /500[\s\S]*250000/);
    assert.equal(await page.locator('tr.changed[data-key="limits.udp_per_source"]').count(), 0, "a default is not marked");
    await page.check("#onlyChanged");
    await page.screenshot({ path: `${shots}/ui-config.png` });
  });

  assert.deepEqual(outside, [], "the page asked for something outside floodgate");
  await browser.close();
  process.stdout.write("ok\n");
})().catch(e => { console.error(e); process.exit(1); });
