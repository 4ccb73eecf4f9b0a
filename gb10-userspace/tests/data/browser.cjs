// Headless Chromium as the page tests launch it: Debian's binary, no sandbox (root in a
// network namespace), nothing fetched from the network on its own.
const { chromium } = require("playwright-core");
exports.launch = () => chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
