// Drives the fleet view in headless Chromium at 1280x720: type the admin token into the
// page, then have a real client (tftp-hpa, curl in the client namespace) ask for a boot
// file that is not there, one that is, and a kernel that is not there; each time wait for
// the client's row to change by the event stream, with no reload. Then open the
// client's timeline with the keyboard. The row's XDP counters must come (non-zero: XDP
// is attached, as by default), and an install's progress heartbeats must show a bar, a
// percentage and MB/s. Every /api request must carry the token.
// argv: url mac token client-ns server-ip http-port shot-dir.
const { launch } = require("./browser.cjs");
const { execFileSync } = require("child_process");
const [url, mac, token, ns, server, port, shots] = process.argv.slice(2);

function client(args) {
  // tftp-hpa exits 0 even when the server answers with an error; the page is the judge.
  try {
    execFileSync("ip", ["netns", "exec", ns, ...args], { stdio: "ignore", timeout: 20000 });
  } catch (_) { /* a 404 or TFTP error is what the test wants */ }
}

(async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
    let loads = 0;
    page.on("load", () => loads++);
    let tokenSet = false;
    const bare = [];
    page.on("request", (req) => {
      const u = new URL(req.url());
      if (!u.pathname.includes("/api/")) return;
      const auth = req.headers()["authorization"];
      if (tokenSet && auth !== "Bearer " + token) bare.push(req.method() + " " + u.pathname);
    });
    await page.goto(url, { timeout: 15000 });
    const status = (want) => page.waitForFunction((w) => document.getElementById("live").textContent === w, want, { timeout: 15000 });
    const live = () => status("live");
    // Every data route needs the admin token: without one the page says so and asks.
    await status("needs a token");
    // The token through the page's own form, by keyboard.
    await page.click("#settoken");
    await page.keyboard.type(token);
    tokenSet = true;
    await page.keyboard.press("Enter");
    await live();
    const stored = await page.evaluate(() => sessionStorage.getItem("gb10-admin-token"));

    const row = `[id="c-${mac}"]`;
    await page.locator(row).waitFor({ timeout: 10000 });
    const why = () => page.locator(`${row} .why`).innerText();
    const waitRow = (pushed, check) => page.waitForFunction(([sel, n, c]) => {
      const el = document.querySelector(sel);
      return el && Number(el.dataset.pushed || 0) >= n && new Function("el", c)(el);
    }, [row, pushed, check], { timeout: 15000 });
    const pushed = async () => Number(await page.locator(row).getAttribute("data-pushed") || 0);
    const before = await page.locator(row).innerText();

    // 1. The boot file the firmware asks for is not there.
    let n = await pushed();
    client(["tftp", "-m", "binary", server, "-c", "get", "shimx64.efi", "/dev/null"]);
    await waitRow(n + 1, "return el.querySelector('.why').textContent.includes('shimx64.efi')");
    const tftpWhy = await why();
    await page.screenshot({ path: shots + "/fleet-stopped.png", fullPage: true });

    // 2. One that is: a step forward clears the reason, the stage moves to TFTP.
    n = await pushed();
    client(["tftp", "-m", "binary", server, "-c", "get", "grubx64.efi", "/dev/null"]);
    await waitRow(n + 1, "return el.dataset.stage === 'tftp'");
    const forward = { why: await why(), stage: await page.locator(row).getAttribute("data-stage"),
      state: await page.locator(row).getAttribute("data-state") };

    // 3. The kernel over HTTP is not there.
    n = await pushed();
    client(["curl", "-sS", "-m", "5", "-o", "/dev/null", `http://${server}:${port}/amd64/vmlinuz`]);
    await waitRow(n + 1, "return el.querySelector('.why').textContent.includes('/amd64/vmlinuz')");
    const httpWhy = await why();

    // The XDP program counted this client's frames: the counters tick brings them.
    await page.waitForFunction((sel) => Number(document.querySelector(sel).dataset.frames || 0) > 0, row, { timeout: 10000 });
    const xdpCell = await page.locator(`${row} .xdp`).innerText();

    // The timeline by keyboard: focus the MAC, Enter, read, Escape.
    await page.focus(`${row} button.mac`);
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => document.getElementById("dtimeline").children.length >= 5, null, { timeout: 10000 });
    const timeline = await page.locator("#dtimeline").innerText();
    const detailXdp = await page.locator("#dxdp").innerText();
    await page.screenshot({ path: shots + "/fleet-detail.png", fullPage: false });
    await page.keyboard.press("Escape");
    const detailHidden = await page.locator("#detail").isHidden();
    const focusBack = await page.evaluate(() => document.activeElement && document.activeElement.className);

    // The "only stopped" filter keeps the stopped client.
    await page.check("#fstopped");
    const shownStopped = await page.locator(row).isVisible();
    await page.uncheck("#fstopped");

    // An image install reports progress (as install.sh does: bytes of the total): a bar,
    // a percentage and MB/s in the row, live.
    const beat = (written) => client(["curl", "-sS", "-m", "5", "-o", "/dev/null",
      "--data-urlencode", `mac=${mac}`, "--data-urlencode", "phase=installing",
      "--data-urlencode", `written=${written}`, "--data-urlencode", "total=40000000",
      `http://${server}:${port}/heartbeat`]);
    n = await pushed();
    beat(10000000);
    await waitRow(n + 1, "return el.dataset.progress === '25'");
    await new Promise((r) => setTimeout(r, 1500));
    n = await pushed();
    beat(30000000);
    await waitRow(n + 1, "return el.dataset.progress === '75'");
    const progress = await page.locator(`${row} .prog`).innerText();
    const bar = await page.locator(`${row} .prog progress`).evaluate((b) => b.value);
    await page.screenshot({ path: shots + "/fleet-progress.png", fullPage: false });
    console.log(JSON.stringify({ before, stored: stored === token, tftpWhy, forward, httpWhy, timeline,
      detailHidden, focusBack, shownStopped, xdpCell, detailXdp, progress, bar, bare, loads }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(String(e)); process.exit(1); });
