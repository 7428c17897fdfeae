// Opens shipped workflows in the current frontend on a ComfyUI that has none of their model files and
// reads the Missing Models panel (Workflow Overview > Issues) as a person sees it: each row's file
// name, the folder shown under it, and whether it offers a Download button. Nothing is downloaded:
// no button is clicked, and every request that leaves the server (the panel asks Hugging Face for
// file sizes) is aborted and recorded.
//
// Usage: node missing_models.mjs config.json
//   config: {url, workflows: {name: UI workflow}, out_dir, chromium}
// Writes <out_dir>/missing_models.json: {ok, panels: {name: [{name, directory, download, copy}]}, external}.

import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
fs.mkdirSync(config.out_dir, { recursive: true });
const report = { ok: false, panels: {}, external: [], console_errors: [] };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const ROW = '[data-testid="missing-model-locate"]';

async function readPanel(page) {
  // The rows settle once the frontend has checked every candidate against the server's model lists.
  let last = "";
  for (let i = 0; i < 40; i++) {
    const rows = await page.evaluate((rowSelector) => Array.from(document.querySelectorAll(rowSelector)).map((locate) => {
      const row = locate.parentElement;
      const label = row.querySelector("button[title]");
      const folder = row.querySelector("span.block");
      const download = row.querySelector('[data-testid="missing-model-download"]');
      const copy = row.querySelector('button[aria-label^="Copy"]');
      return { name: label?.getAttribute("title") ?? null, directory: folder?.textContent.trim() ?? null,
        download: download ? download.getAttribute("aria-label") : null, copy: copy?.getAttribute("aria-label") ?? null };
    }), ROW);
    const text = JSON.stringify(rows);
    if (rows.length && text === last) return rows;
    last = text;
    await sleep(500);
  }
  return JSON.parse(last || "[]");
}

async function run(page) {
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(config.url)) return route.continue();
    report.external.push({ method: route.request().method(), url });
    return route.abort();
  });
  page.on("pageerror", (error) => report.console_errors.push(`pageerror: ${error.message}`));
  await page.goto(config.url, { waitUntil: "load", timeout: 60000 });
  await page.waitForFunction(() => window.app?.graph && window.__COMFYUI_FRONTEND_VERSION__, null, { timeout: 60000 });
  report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__);
  await sleep(1000);
  await page.keyboard.press("Escape"); // any dialog a fresh page may open
  for (const [name, workflow] of Object.entries(config.workflows)) {
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
    // The error overlay's "View details" opens the Issues tab; once open, the tab follows the workflow.
    const details = page.getByText("View details", { exact: true });
    await details.first().waitFor({ timeout: 15000 }).then(() => details.first().click()).catch(() => {});
    await page.waitForSelector('[data-testid="error-group-missing-model"]', { timeout: 30000 });
    report.panels[name] = await readPanel(page);
    await page.screenshot({ path: path.join(config.out_dir, `missing_models_${name}.png`) });
  }
  report.ok = true;
}

const browser = await chromium.launch({ executablePath: config.chromium || "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await run(page);
} catch (error) {
  report.error = String(error?.stack ?? error);
} finally {
  fs.writeFileSync(path.join(config.out_dir, "missing_models.json"), JSON.stringify(report, null, 1));
  await browser.close();
}
process.exit(report.ok ? 0 : 1);
