// Drives Debian's chromium with playwright-core against a running ComfyUI with the pack loaded, and
// writes what it measured to <out_dir>/report.json plus screenshots (the pytest driver
// tests/integration/test_browser.py asserts on them).
//
// Usage: node run_browser_test.mjs config.json
//   config: {url, prompt (API format), workflow (UI format), multiview_node, rig_node, views, fps, frames,
//            out_dir, chromium}
//
// Works with the 2024 legacy UI and the current frontend: only window.app, app.loadGraphData,
// app.graph/app.canvas (LiteGraph) and the /scripts/api.js module are used.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const HEADLESS_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const EXTENSION_URL = "/extensions/cvd-multiview/cvd_multiview.js";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
fs.mkdirSync(config.out_dir, { recursive: true });
const report = { ok: false, phases: {}, console_errors: [] };
const t0 = Date.now();
const phase = (name) => { report.phases[name] = (Date.now() - t0) / 1000; };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function writeReport() {
  fs.writeFileSync(path.join(config.out_dir, "report.json"), JSON.stringify(report, null, 1));
}

/** Max pairwise distance of times on a loop of `duration` seconds. */
function loopSpread(times, duration) {
  let worst = 0;
  for (const a of times) {
    for (const b of times) {
      let d = (((a - b) % duration) + duration) % duration;
      worst = Math.max(worst, Math.min(d, duration - d));
    }
  }
  return worst;
}

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "cvd-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: config.chromium || "/usr/bin/chromium",
    headless: true,
    args: HEADLESS_FLAGS,
    viewport: { width: 1280, height: 1400 },
  });
  try {
    await run(context);
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

async function run(context) {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (msg) => { if (msg.type() === "error") report.console_errors.push(msg.text()); });
  page.on("pageerror", (error) => report.console_errors.push(`pageerror: ${error.message}`));
  phase("browser_started");

  await page.goto(config.url, { waitUntil: "load", timeout: 60000 });
  await page.waitForFunction(() => window.app?.graph && window.app?.canvas, null, { timeout: 60000 });
  // Extensions load in parallel with setup; the node definitions are registered once they have.
  await page.waitForFunction(() => (window.app.extensions ?? []).some((e) => e.name === "cvd.multiview")
    || window.comfyAPI?.extensionStore, null, { timeout: 30000 }).catch(() => {});
  report.extension_registered = await page.evaluate(() => {
    const list = window.app.extensions ?? window.app.extensionManager?.extensions ?? [];
    return Array.from(list).some((e) => e.name === "cvd.multiview");
  });
  report.ui = await page.evaluate(() => ({
    legacy: !window.__COMFYUI_FRONTEND_VERSION__, // only the Vue frontend sets it
    frontend_version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
  }));
  // The current frontend greets a new user (fresh profile) with a templates dialog: close it.
  for (let i = 0; i < 3 && await page.locator(".p-dialog-mask").count(); i++) {
    await page.keyboard.press("Escape");
    await sleep(300);
  }
  phase("ui_loaded");

  // Load the workflow as a person would (drag & drop calls the same function), then queue the
  // API-format prompt under the page's client id so this page receives the progress and executed messages.
  await page.evaluate(async (workflow) => {
    await window.app.loadGraphData(workflow);
    // The element of a node's widget, for the measurements below.
    window.widgetElement = (id, name) => window.app.graph.getNodeById(Number(id)).widgets
      .find((w) => w.name === name).element;
  }, config.workflow);
  report.pack_nodes_marked = await page.evaluate((ids) => ids.every(
    (id) => window.app.graph.getNodeById(Number(id))?.cvdExtension === "cvd.multiview"),
  [config.multiview_node, config.rig_node]);
  await page.evaluate(async (extensionUrl) => {
    const { api } = await import("/scripts/api.js");
    const ext = await import(extensionUrl);
    window.__cvdProgress = [];
    api.addEventListener("progress", ({ detail }) => {
      // Our extension registered its listener first, so its text for this message is already set.
      const { value, max, node } = detail;
      window.__cvdProgress.push({ value, max, node, text: ext.progressText(node) });
    });
  }, EXTENSION_URL);
  await queuePrompt(page, config.prompt, config.workflow);
  phase("queued");

  // Wait for both previews: players with decoded first frames, and a drawn rig.
  await page.waitForFunction(({ mv, rig, views }) => {
    const find = (id, name) => window.app.graph.getNodeById(Number(id))?.widgets?.find((w) => w.name === name);
    const grid = find(mv, "cvd_multiview_players")?.element?.cvdController;
    const rigView = find(rig, "cvd_rig_view")?.element?.cvdController;
    return grid && grid.videos.length === views && grid.videos.every((v) => v.readyState >= 2)
      && rigView && rigView.drawCount > 0;
  }, { mv: config.multiview_node, rig: config.rig_node, views: config.views }, { timeout: 90000, polling: 100 });
  phase("previews_ready");

  await page.evaluate((mv) => {
    window.__cvdGrid = window.app.graph.getNodeById(Number(mv)).widgets
      .find((w) => w.name === "cvd_multiview_players").element.cvdController;
  }, config.multiview_node);
  const duration = config.frames / config.fps;
  const sample = () => page.evaluate(() => {
    const g = window.__cvdGrid;
    return {
      times: g.videos.map((v) => v.currentTime), paused: g.videos.map((v) => v.paused),
      seeking: g.videos.some((v) => v.seeking), clock: g.clock.time(), playing: g.clock.playing,
      frame: g.clock.frame(), frame_text: g.frameText.textContent, resyncs: g.resyncs,
    };
  });
  const settled = async () => {
    await page.waitForFunction(() => !window.__cvdGrid.videos.some((v) => v.seeking || v.readyState < 2),
      null, { timeout: 10000, polling: 20 });
    return sample();
  };
  const measure = (s, extra = {}) => ({ ...s, spread: loopSpread(s.times, duration), ...extra });

  // The grid starts playing by itself (muted videos may autoplay).
  const grid = await page.evaluate(async () => {
    const g = window.__cvdGrid;
    const root = g.host;
    const links = [...root.querySelectorAll("a.cvd-download")];
    const status = await Promise.all(links.map((a) => fetch(a.href).then((r) => r.status, () => 0)));
    return {
      videos: root.querySelectorAll("video").length,
      labels: [...root.querySelectorAll(".cvd-view-label")].map((e) => e.textContent),
      ready_states: g.videos.map((v) => v.readyState),
      downloads: links.map((a) => a.getAttribute("href")),
      download_status: status,
      can_play_mp4: document.createElement("video").canPlayType('video/mp4; codecs="avc1.42E01E"'),
    };
  });
  report.grid = grid;
  report.sync = {};

  // 1. playing: all views advance together.
  const start = await settled();
  await sleep(1500);
  let now = await sample();
  report.sync.playing = measure(now, { advanced: loopSpread([now.clock, start.clock], duration) });

  // 2. push one player half a loop off the clock: the grid must seek it back within a few frames.
  const before = now.resyncs;
  await page.evaluate((d) => {
    const video = window.__cvdGrid.videos[1];
    video.currentTime = (video.currentTime + d / 2) % d;
  }, duration);
  await sleep(600);
  now = await settled();
  report.sync.after_desync = measure(now, { resyncs: now.resyncs - before });

  // 3. pause with the button, scrub the shared timeline to frame 5.
  await page.click(".cvd-player-grid button.cvd-play");
  await page.evaluate(() => {
    const slider = window.__cvdGrid.slider;
    slider.value = "5";
    slider.dispatchEvent(new Event("input", { bubbles: true }));
    slider.dispatchEvent(new Event("change", { bubbles: true }));
  });
  await sleep(300);
  now = await settled();
  report.sync.after_seek = measure(now, { paused: now.paused.every(Boolean) && !now.playing });

  // 4. play again from there.
  const resumed = now;
  await page.click(".cvd-player-grid button.cvd-play");
  await sleep(800);
  now = await sample();
  report.sync.playing_after_seek = measure(now, { advanced: loopSpread([now.clock, resumed.clock], duration) });
  phase("sync_checked");

  // Rig view: ink on the canvas, one legend colour per view, and a drag orbits the camera.
  report.rig = await rigFacts(page, config.rig_node, config.views);
  const box = await page.evaluate((rig) => {
    const canvas = widgetElement(rig, "cvd_rig_view").querySelector("canvas");
    const r = canvas.getBoundingClientRect();
    return { x: r.x, y: r.y, width: r.width, height: r.height };
  }, config.rig_node);
  const beforeDrag = report.rig.hash;
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 + 80, box.y + box.height / 2 + 20, { steps: 5 });
  await page.mouse.up();
  const afterDrag = await rigFacts(page, config.rig_node, config.views);
  report.rig.changed_after_drag = afterDrag.hash !== beforeDrag;
  await page.evaluate((rig) => {
    const view = widgetElement(rig, "cvd_rig_view").cvdController;
    view.reset();
    view.draw();
  }, config.rig_node);
  phase("rig_checked");

  report.progress = await page.evaluate(() => window.__cvdProgress.filter((p) => p.node != null));

  // Re-execution (a new seed upstream): the players are replaced in the same widget, the old ones stopped.
  const rerun = structuredClone(config.prompt);
  rerun[config.rerun_seed_node].inputs.perturb_seed += 1;
  await queuePrompt(page, rerun, config.workflow);
  await page.waitForFunction(({ mv, views }) => {
    const grid = widgetElement(mv, "cvd_multiview_players").cvdController;
    return grid !== window.__cvdGrid && grid.videos.length === views && grid.videos.every((v) => v.readyState >= 2);
  }, { mv: config.multiview_node, views: config.views }, { timeout: 60000, polling: 100 });
  report.rerun = await page.evaluate((mv) => {
    const node = window.app.graph.getNodeById(Number(mv));
    const widgets = node.widgets.filter((w) => w.name === "cvd_multiview_players");
    const old = window.__cvdGrid;
    window.__cvdGrid = widgets[0].element.cvdController;
    return { widgets: widgets.length, videos_in_widget: widgets[0].element.querySelectorAll("video").length,
      videos_in_page: document.querySelectorAll("video").length, old_disposed: old.disposed,
      old_videos_released: old.videos.length === 0, playing: window.__cvdGrid.clock.playing };
  }, config.multiview_node);
  phase("rerun_checked");

  // Resizing the node re-lays out the same players (nothing is rebuilt or lost).
  report.resize = await page.evaluate(async (mv) => {
    const node = window.app.graph.getNodeById(Number(mv));
    const host = widgetElement(mv, "cvd_multiview_players");
    const frames = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const redraw = async () => {
      window.app.canvas.setDirty(true, true);
      window.app.canvas.draw(true, true);
      await frames();
    };
    await redraw();
    const before = host.offsetWidth;
    node.setSize([node.size[0] + 200, node.size[1] + 150]);
    await redraw();
    const after = host.offsetWidth;
    const video = host.querySelector("video").getBoundingClientRect();
    node.setSize([node.size[0] - 200, node.size[1] - 150]); // back: compact screenshots
    await redraw();
    return { before, after, same_players: host.cvdController === window.__cvdGrid,
      videos: host.querySelectorAll("video").length, video_height: video.height };
  }, config.multiview_node);

  // Screenshots: each node alone at scale 1, then the same box of empty canvas as the background reference.
  await page.click(".cvd-player-grid button.cvd-play"); // pause: a steady frame for the picture
  await shootNode(page, config.multiview_node, path.join(config.out_dir, "multiview_grid.png"));
  await shootNode(page, config.rig_node, path.join(config.out_dir, "rig_view.png"));
  await shootNode(page, config.rig_node, path.join(config.out_dir, "background.png"), true);
  phase("screenshots");
  report.ok = true;
}

/** POST /prompt from the page, under its client id, so that it receives progress and executed messages. */
async function queuePrompt(page, prompt, workflow) {
  const queued = await page.evaluate(async ({ prompt, workflow }) => {
    const { api } = await import("/scripts/api.js");
    for (let i = 0; i < 100 && !api.clientId; i++) await new Promise((r) => setTimeout(r, 100));
    const response = await fetch(api.apiURL("/prompt"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, client_id: api.clientId, extra_data: { extra_pnginfo: { workflow } } }),
    });
    return { status: response.status, body: await response.json() };
  }, { prompt, workflow });
  if (queued.status !== 200) throw new Error(`/prompt refused the workflow: ${JSON.stringify(queued.body)}`);
}

async function rigFacts(page, rigNode, views) {
  return page.evaluate(async ({ rig, views }) => {
    const { viewColor } = await import("/extensions/cvd-multiview/lib/rig_view.js");
    const view = widgetElement(rig, "cvd_rig_view").cvdController;
    const canvas = view.canvas;
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const bg = [0xf8, 0xf8, 0xf6];
    let ink = 0, hash = 0;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) {
      const differs = Math.abs(data[i] - bg[0]) + Math.abs(data[i + 1] - bg[1]) + Math.abs(data[i + 2] - bg[2]) > 30;
      if (differs) ink += 1;
      hash = (hash * 31 + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) >>> 0;
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
    // The legend swatches are drawn in the exact view colours (the same as cvd_core.viz.view_colors).
    const rgb = (css) => css.match(/\d+/g).map(Number);
    const found = Array.from({ length: views }, (_, v) => rgb(viewColor(v)))
      .filter(([r, g, b]) => colours.has((r << 16) | (g << 8) | b)).length;
    return { draw_count: view.drawCount, ink_fraction: ink / (data.length / 4), view_colours_found: found, hash,
      width: canvas.width, height: canvas.height };
  }, { rig: rigNode, views });
}

/** Screenshot of a node at scale 1 near the top-left of the canvas (or of empty canvas when `empty`). */
async function shootNode(page, nodeId, file, empty = false) {
  const clip = await page.evaluate(({ id, empty }) => {
    const app = window.app;
    const node = app.graph.getNodeById(Number(id));
    const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    // Put the node's top-left corner (title included) at (left, top) of the canvas, or far away.
    // The current frontend overlays workflow tabs on the canvas's top edge: keep below them.
    const left = 12, top = 72;
    const ds = app.canvas.ds;
    ds.scale = 1;
    const far = empty ? 100000 : 0;
    ds.offset[0] = left - node.pos[0] + far;
    ds.offset[1] = top + title - node.pos[1] + far;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    const rect = app.canvas.canvas.getBoundingClientRect();
    return { x: rect.x + left - 6, y: rect.y + top - 6, width: node.size[0] + 12, height: node.size[1] + title + 12 };
  }, { id: nodeId, empty });
  // Two animation frames: DOM widgets follow the canvas on its next draws.
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await sleep(300);
  await page.screenshot({ path: file, clip });
}

main().then(() => { writeReport(); }, (error) => {
  report.error = String(error?.stack ?? error);
  writeReport();
  console.error(report.error);
  process.exit(1);
});
