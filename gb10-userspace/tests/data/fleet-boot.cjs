// The fleet view watched in headless Chromium (1280x720) while a real firmware boots
// (`cargo xtask e2e`): opened before the VM starts, the admin token typed into the page,
// then every stage the VM's row shows is recorded as the page displays it (a
// MutationObserver on the row), with no reload. It ends when the row reaches the
// heartbeat (`expect` = "heartbeat": then the XDP counters must come) or when the row's
// "why it stopped" names `expect` = "stop:<file>"; then the row's timeline is opened and
// closed by keyboard, the layout measured, screenshots kept, and one JSON line printed.
// argv: url mac token shots-prefix ready-file expect deadline-seconds.
const { launch } = require("./browser.cjs");
const fs = require("fs");
const [url, mac, token, shots, ready, expect, deadline] = process.argv.slice(2);
const until = Date.now() + Number(deadline) * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

(async () => {
  const browser = await launch();
  // Killed (timeout, or the runner giving up): Chromium goes with this process.
  process.on("SIGTERM", () => browser.close().finally(() => process.exit(143)));
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
    let loads = 0, lists = 0;
    page.on("load", () => loads++);
    const bare = [];
    let tokenSet = false;
    page.on("request", (req) => {
      const u = new URL(req.url());
      if (!u.pathname.includes("/api/")) return;
      if (/\/api\/clients$/.test(u.pathname)) lists++;
      if (tokenSet && req.headers()["authorization"] !== "Bearer " + token) bare.push(u.pathname);
    });
    const opened = Date.now();
    await page.goto(url, { timeout: 20000 });
    const status = (w) => page.waitForFunction((w) => document.getElementById("live").textContent === w, w, { timeout: 20000 });
    await status("needs a token");
    await page.click("#settoken");
    await page.keyboard.type(token);
    tokenSet = true;
    await page.keyboard.press("Enter");
    await status("live");

    // The row (an inventory host: there before the VM is) and what it displays, as it
    // changes: each data-stage value in order. A MutationObserver hands over every change
    // with the value before it, so stages set in one task are not lost.
    const row = `[id="c-${mac}"]`;
    await page.locator(row).waitFor({ timeout: 10000 });
    await page.evaluate((sel) => {
      const el = document.querySelector(sel);
      const seen = window.__seen = [];
      const t0 = Date.now();
      const push = (stage) => {
        if (!stage || (seen.length && seen[seen.length - 1].stage === stage)) return;
        seen.push({ stage, state: el.dataset.state, pushed: Number(el.dataset.pushed || 0), at_ms: Date.now() - t0 });
      };
      push(el.dataset.stage);
      new MutationObserver((records) => {
        for (const r of records) push(r.oldValue);
        push(el.dataset.stage);
      }).observe(el, { attributes: true, attributeFilter: ["data-stage"], attributeOldValue: true });
    }, row);
    const readyMs = Date.now() - opened;
    fs.writeFileSync(ready, String(readyMs));

    // Until the end it waits for: the VM boots meanwhile.
    const stopFile = expect.startsWith("stop:") ? expect.slice(5) : null;
    let live = null;
    for (;;) {
      if (Date.now() > until) throw new Error("the row never showed " + expect + "; seen " + JSON.stringify(await page.evaluate(() => window.__seen)));
      const cur = await page.evaluate((sel) => {
        const el = document.querySelector(sel);
        return { stage: el.dataset.stage, why: el.querySelector(".why").textContent };
      }, row);
      if (!live && (cur.stage === "http" || stopFile)) {
        // The row mid-boot, as the operator sees it.
        live = shots + "-fleet-live.png";
        await page.screenshot({ path: live });
      }
      if (stopFile ? cur.why.includes(stopFile) : cur.stage === "heartbeat") break;
      await sleep(200);
    }
    const doneMs = Date.now() - opened;
    // The XDP counters (ticked every 2 s): with XDP attached the VM's frames are counted.
    let frames = 0;
    try {
      await page.waitForFunction((sel) => Number(document.querySelector(sel).dataset.frames || 0) > 0, row, { timeout: 8000 });
    } catch (_) { /* reported as 0 */ }
    frames = Number(await page.locator(row).getAttribute("data-frames") || 0);
    const xdpCell = await page.locator(`${row} .xdp`).innerText();
    const why = await page.locator(`${row} .why`).innerText();
    const rowText = await page.locator(row).innerText();
    await page.screenshot({ path: shots + (stopFile ? "-fleet-stopped.png" : "-fleet-heartbeat.png") });

    // Readable at 1280x720: nothing wider than the window, the row's cells inside it,
    // text no smaller than 12 px.
    const layout = await page.evaluate((sel) => {
      const el = document.querySelector(sel);
      const r = el.getBoundingClientRect();
      const sizes = [...el.querySelectorAll("td")].map((td) => parseFloat(getComputedStyle(td).fontSize));
      return { scrollWidth: document.documentElement.scrollWidth, width: window.innerWidth,
        rowLeft: r.left, rowRight: r.right, rowTop: r.top, minFontPx: Math.min(...sizes) };
    }, row);

    // By keyboard: Tab from the token button to the row's MAC, Enter opens its timeline,
    // Escape closes it and gives the focus back.
    await page.focus("#settoken");
    let tabs = 0;
    while (tabs < 12 && !(await page.evaluate((sel) => document.activeElement === document.querySelector(sel + " button.mac"), row))) {
      await page.keyboard.press("Tab");
      tabs++;
    }
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.getElementById("dtimeline").children.length >= 3, null, { timeout: 10000 });
    const timeline = await page.locator("#dtimeline").innerText();
    const detailXdp = await page.locator("#dxdp").innerText();
    await page.screenshot({ path: shots + "-fleet-detail.png" });
    await page.keyboard.press("Escape");
    const detailHidden = await page.locator("#detail").isHidden();
    const focusBack = await page.evaluate((sel) => document.activeElement === document.querySelector(sel + " button.mac"), row);
    const seen = await page.evaluate(() => window.__seen);
    const endMs = Date.now() - opened;
    console.log(JSON.stringify({ seen, loads, lists, bare, readyMs, doneMs, endMs, frames, xdpCell, why, rowText,
      layout, tabs, timeline, detailXdp, detailHidden, focusBack }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(String(e)); process.exit(1); });
