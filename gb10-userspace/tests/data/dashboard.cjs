// Drives the dashboard in headless Chromium: load the grid, then have the host
// heartbeat (from the client namespace) and wait for its tile to change by SSE, with
// no reload. argv: url mac heartbeat-ns heartbeat-url screenshot token. The token goes in
// the address's fragment, which the page keeps in session storage and never sends.
const { launch } = require("./browser.cjs");
const { execFileSync } = require("child_process");
const [url, mac, ns, beatUrl, shot, token] = process.argv.slice(2);
(async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    let loads = 0;
    page.on("load", () => loads++);
    // Without the token: the page asks for it and shows no host.
    await page.goto(url, { timeout: 15000 });
    await page.waitForSelector("#login:not([hidden])", { timeout: 10000 });
    if (await page.locator(`[id="h-${mac}"]`).count() !== 0) throw new Error("a host shown without the token");
    // Only the fragment changes (no reload): the page takes the token on hashchange and
    // clears it from the address.
    await page.goto(url + "#token=" + encodeURIComponent(token), { timeout: 15000 });
    await page.waitForFunction(() => !location.href.includes("token"), null, { timeout: 5000 })
      .catch(() => { throw new Error("the token stayed in the address: " + page.url()); });
    const tile = page.locator(`[id="h-${mac}"]`);
    await tile.waitFor({ timeout: 10000 });
    await page.waitForFunction(() => document.getElementById("live").textContent === "live", null, { timeout: 10000 });
    const before = await tile.innerText();
    execFileSync("ip", ["netns", "exec", ns, "curl", "-sS", "-f", "-m", "5", "-H", "Content-Type: application/json",
      "--data", JSON.stringify({ mac, phase: "alive" }), beatUrl]);
    await page.waitForFunction((m) => {
      const el = document.getElementById("h-" + m);
      return el && el.dataset.pushed && el.textContent.includes("heartbeat alive");
    }, mac, { timeout: 10000 });
    const after = await tile.innerText();
    await page.screenshot({ path: shot, fullPage: true });
    // Page loads up to here (the tile changed with none); the link below is one more.
    const seen = { before, after, loads };
    // The fleet view is one click away.
    await page.click("#fleetlink");
    await page.waitForFunction(() => document.title === "gb10-provision fleet", null, { timeout: 10000 })
      .catch(() => { throw new Error("the fleet link led to " + page.url()); });
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(String(e)); process.exit(1); });
