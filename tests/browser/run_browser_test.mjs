// Drives Debian's chromium with playwright-core against a running ComfyUI with the pack loaded, and
// writes what it measured to <out_dir>/report.json plus screenshots (the pytest driver
// tests/integration/test_browser.py asserts on them).
//
// Usage: node run_browser_test.mjs config.json
//   config: {url, prompt (API format), workflow (UI format), multiview_node, rig_node, views, fps, frames,
//            out_dir, chromium, expect_first_run_dialog, editor: {node, preview, view, drag, frames, width, height}}
//
// One script for the three UIs the pack is tested in: the 2024 legacy UI, and the current frontend in
// its classic LiteGraph canvas and in Vue nodes mode (the server-side setting is chosen by the caller
// before the page loads). Only window.app, app.loadGraphData, app.graph/app.canvas (LiteGraph), the
// /scripts/api.js module and the page's DOM are used, plus real mouse input for the interactions.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const HEADLESS_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const EXTENSION_URL = "/extensions/cvd-multiview/cvd_multiview.js";
const PACK_URL_PART = "/extensions/cvd-multiview/";
// Any open modal: the current frontend's dialogs (reka-ui) and the older PrimeVue ones.
const OPEN_DIALOG = '[role="dialog"][data-state="open"], .p-dialog-mask';
const FIRST_RUN_DIALOG = '[data-dialog-key="global-workflow-template-selector"]';

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
      const d = (((a - b) % duration) + duration) % duration;
      worst = Math.max(worst, Math.min(d, duration - d));
    }
  }
  return worst;
}

/** Signed a - b folded into [-duration/2, duration/2). */
function loopDiff(a, b, duration) {
  let d = (((a - b) % duration) + duration) % duration;
  if (d >= duration / 2) d -= duration;
  return d;
}

// Runs in the page before any of its scripts: keep every console warning/error with the stack of
// the call, so that a deprecation warning can be traced to the code that caused it.
function recordConsole() {
  window.__cvdConsole = [];
  for (const level of ["warn", "error", "log", "info"]) {
    const original = console[level].bind(console);
    console[level] = (...args) => {
      try {
        const text = args.map((a) => (typeof a === "string" ? a : a instanceof Error ? a.message : (() => {
          try { return JSON.stringify(a); } catch { return String(a); }
        })())).join(" ");
        if (/deprecat/i.test(text)) window.__cvdConsole.push({ level, text, stack: new Error().stack ?? "" });
      } catch { /* never break the page's logging */ }
      return original(...args);
    };
  }
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
  await page.addInitScript(recordConsole);
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
    legacy: !window.__COMFYUI_FRONTEND_VERSION__, // only the current frontend sets it
    frontend_version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
  }));
  report.first_run_dialog = await settleStartup(page, !report.ui.legacy && config.expect_first_run_dialog);
  phase("ui_loaded");

  // Load the workflow as a person would (drag & drop calls the same function), then queue the
  // API-format prompt under the page's client id so this page receives the progress and executed messages.
  await page.evaluate(async (workflow) => {
    await window.app.loadGraphData(workflow);
    // The element of a node's widget, for the measurements below.
    window.widgetElement = (id, name) => window.app.graph.getNodeById(Number(id)).widgets
      .find((w) => w.name === name).element;
  }, config.workflow);
  report.free_area = await freeCanvasArea(page);
  await showGraphOrigin(page, report.free_area);
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
  await showGraphOrigin(page, report.free_area); // the nodes grew: redraw them where they belong
  report.ui.vue_nodes = await page.evaluate((id) => !!document.querySelector(`.lg-node[data-node-id="${id}"]`),
    config.multiview_node);
  phase("previews_ready");

  await page.evaluate((mv) => {
    window.__cvdGrid = window.app.graph.getNodeById(Number(mv)).widgets
      .find((w) => w.name === "cvd_multiview_players").element.cvdController;
  }, config.multiview_node);

  report.grid = await gridFacts(page);
  report.sync = await sharedClockFacts(page);
  phase("sync_checked");
  report.scrub = await scrubFacts(page, config.multiview_node);
  phase("scrub_checked");

  // Rig view: ink on the canvas, one legend colour per view, a drag orbits the camera, the wheel zooms it.
  report.rig = await rigFacts(page, config.rig_node, config.views);
  const beforeDrag = report.rig.hash;
  const box = await elementBox(page, config.rig_node, "cvd_rig_view", "canvas");
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 + 80, box.y + box.height / 2 + 20, { steps: 5 });
  await page.mouse.up();
  const afterDrag = await rigFacts(page, config.rig_node, config.views);
  report.rig.changed_after_drag = afterDrag.hash !== beforeDrag;
  report.wheel = await wheelFacts(page, config.rig_node);
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

  report.resize = await resizeFacts(page, config.multiview_node);
  report.message = await messageFacts(page, config.rig_node);

  // Screenshots: each node alone at scale 1, then the same box of empty canvas as the background reference.
  await page.click(".cvd-player-grid button.cvd-play"); // pause: a steady frame for the picture
  const shots = {};
  shots.multiview_grid = await shootNode(page, config.multiview_node, path.join(config.out_dir, "multiview_grid.png"));
  report.animation = await captureTimeline(page, shots.multiview_grid.clip);
  shots.rig_view = await shootNode(page, config.rig_node, path.join(config.out_dir, "rig_view.png"));
  shots.background = await shootNode(page, config.rig_node, path.join(config.out_dir, "background.png"), shots.rig_view.clip);
  report.shots = shots;
  phase("screenshots");
  if (config.editor) {
    report.editor = await editorFacts(page, config.editor);
    phase("editor_checked");
  }
  report.deprecations = await deprecationFacts(page);
  if (config.editor) {
    report.editor.reload = await editorReloadFacts(page, config.editor, report.editor.final_text);
    phase("editor_reloaded");
  }
  report.ok = true;
}

// ------------------------------------------------------------------------------ start-up

/**
 * Let the UI finish starting before the test touches the graph. The current frontend restores or
 * loads a workflow after `window.app` exists; for a new user (server setting Comfy.TutorialCompleted
 * unset) it loads a blank workflow and opens the template browser, a modal over the canvas. A new
 * user closes it with Escape, and so does this test, then waits until no modal is left.
 */
async function settleStartup(page, expectDialog) {
  const facts = { expected: !!expectDialog, seen: false, closed: false };
  if (expectDialog) {
    await page.waitForSelector(`${FIRST_RUN_DIALOG}[data-state="open"]`, { timeout: 60000 });
    facts.seen = true;
    await page.keyboard.press("Escape");
  } else {
    // A returning user: the frontend restores/loads a workflow instead; wait until it is there.
    await page.waitForFunction(() => !window.__COMFYUI_FRONTEND_VERSION__ || window.app.graph.nodes.length > 0,
      null, { timeout: 30000 }).catch(() => {});
    facts.seen = (await page.locator(OPEN_DIALOG).count()) > 0;
    if (facts.seen) await page.keyboard.press("Escape");
  }
  await page.waitForFunction((selector) => !document.querySelector(selector), OPEN_DIALOG, { timeout: 30000 });
  facts.closed = true;
  facts.dialog_elements_left = await page.locator(FIRST_RUN_DIALOG).count();
  return facts;
}

// ------------------------------------------------------------------------------ layout

/**
 * The part of the graph canvas no panel, bar or overlay covers, in page pixels: the current frontend
 * draws a sidebar, tabs, breadcrumbs, a run bar and a minimap over the canvas. Measured by asking the
 * page which element is on top at a grid of points while the view shows an empty part of the graph:
 * a covered point in the top or bottom quarter moves that edge, one at the sides the left or right
 * edge (the canvas is taller than wide, so corner overlays cost height, not width).
 */
async function freeCanvasArea(page) {
  return page.evaluate(async () => {
    const app = window.app;
    const canvas = app.canvas.canvas;
    const ds = app.canvas.ds;
    const saved = [ds.scale, ds.offset[0], ds.offset[1]];
    ds.offset[0] = 1e5;
    ds.offset[1] = 1e5;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    // DOM widgets and Vue nodes follow the view on the next frames.
    for (let i = 0; i < 3; i++) await new Promise((r) => requestAnimationFrame(r));
    const rect = canvas.getBoundingClientRect();
    const step = 12;
    let { left, top, right, bottom } = rect;
    const band = { top: rect.top + rect.height / 4, bottom: rect.bottom - rect.height / 4,
      left: rect.left + rect.width / 4, right: rect.right - rect.width / 4 };
    for (let y = rect.top + step / 2; y < rect.bottom; y += step) {
      const middleRow = y >= band.top && y <= band.bottom;
      for (let x = rect.left + step / 2; x < rect.right; x += step) {
        // The middle of the canvas is not sampled here: whatever covers a node there is caught by the
        // screenshot check (shootNode), which samples each shot's own box.
        if (middleRow && x > band.left && x < band.right) { x = band.right; continue; }
        if (document.elementFromPoint(x, y) === canvas) continue;
        if (y < band.top) top = Math.max(top, y + step);
        else if (y > band.bottom) bottom = Math.min(bottom, y - step);
        else if (x < band.left) left = Math.max(left, x + step);
        else right = Math.min(right, x - step);
      }
    }
    [ds.scale, ds.offset[0], ds.offset[1]] = saved;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    return { left: Math.ceil(left), top: Math.ceil(top), right: Math.floor(right), bottom: Math.floor(bottom),
      canvas: { left: rect.left, top: rect.top, width: rect.width, height: rect.height } };
  });
}

/** Scale 1, graph point (0, 0) (where the preview nodes are placed) near the top-left of the free area. */
async function showGraphOrigin(page, area) {
  await page.evaluate((area) => {
    const app = window.app;
    const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const rect = app.canvas.canvas.getBoundingClientRect();
    const ds = app.canvas.ds;
    ds.scale = 1;
    ds.offset[0] = area.left - rect.left + 24;
    ds.offset[1] = area.top - rect.top + 24 + title;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
  }, area);
  await animationFrames(page);
}

const animationFrames = (page) => page.evaluate(
  () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));

/** Page box of a node's widget element (or of `selector` inside it). */
async function elementBox(page, nodeId, widgetName, selector) {
  return page.evaluate(({ nodeId, widgetName, selector }) => {
    const host = widgetElement(nodeId, widgetName);
    const el = selector ? host.querySelector(selector) : host;
    const r = el.getBoundingClientRect();
    return { x: r.x, y: r.y, width: r.width, height: r.height };
  }, { nodeId, widgetName, selector });
}

// ------------------------------------------------------------------------------ players

async function gridFacts(page) {
  return page.evaluate(async () => {
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
      video_boxes: g.videos.map((v) => { const r = v.getBoundingClientRect(); return [r.width, r.height]; }),
    };
  });
}

/**
 * One sample of the players: each video's time, the clock, and the page's own wall clock, all read in
 * the same task, so that what happened between two samples is known exactly however long the
 * round trip to the page took (a loaded machine can stall it for many frames).
 */
const sample = (page) => page.evaluate(() => {
  const g = window.__cvdGrid;
  return {
    wall: performance.now() / 1000,
    times: g.videos.map((v) => v.currentTime), paused: g.videos.map((v) => v.paused),
    seeking: g.videos.some((v) => v.seeking), clock: g.clock.time(), playing: g.clock.playing,
    frame: g.clock.frame(), frame_text: g.frameText.textContent, resyncs: g.resyncs,
    presented: g.videos.map((v) => v.webkitDecodedFrameCount ?? 0),
  };
});

async function settled(page) {
  await page.waitForFunction(() => !window.__cvdGrid.videos.some((v) => v.seeking || v.readyState < 2),
    null, { timeout: 10000, polling: 20 });
  return sample(page);
}

/** How a sample compares with an earlier one: spread of the views, drift from the clock, progress. */
function measure(now, before, duration, extra = {}) {
  const facts = { ...now, spread: loopSpread(now.times, duration),
    drift: Math.max(...now.times.map((t) => Math.abs(loopDiff(t, now.clock, duration)))), ...extra };
  if (before) {
    const elapsed = now.wall - before.wall;
    facts.elapsed = elapsed;
    // The clock must have moved by the wall time that passed (modulo the loop), and so must each
    // player; a stalled clock would be off by the whole elapsed time.
    facts.clock_error = Math.abs(loopDiff(now.clock - before.clock, elapsed, duration));
    facts.player_errors = now.times.map((t, i) => Math.abs(loopDiff(t - before.times[i], elapsed, duration)));
    facts.decoded = now.presented.map((n, i) => n - before.presented[i]);
  }
  return facts;
}

/**
 * Play, desync, pause + seek, play again. "Advancing" is judged against the page's wall clock over
 * a window shorter than half a loop, never by the distance travelled on the loop alone: a fixed
 * sleep plus an unmeasured round trip can last a whole loop (2 s here) on a busy machine, and a
 * clock that went round once would then look as if it had hardly moved.
 */
async function sharedClockFacts(page) {
  const duration = config.frames / config.fps;
  const frame = 1 / config.fps;
  const sync = {};
  const observe = async (ms) => {
    // Retry until the window is unambiguous: long enough to see motion, shorter than half a loop.
    let start, now;
    for (let attempt = 0; attempt < 8; attempt++) {
      start = await settled(page);
      await sleep(ms);
      now = await sample(page);
      const elapsed = now.wall - start.wall;
      if (elapsed > 2 * frame && elapsed < duration / 2) break;
    }
    return [start, now];
  };

  // 1. playing: all views advance together, at the speed of the wall clock.
  const [start, playing] = await observe(600);
  sync.playing = measure(playing, start, duration);

  // 2. push one player half a loop off the clock: the grid must seek it back within a few frames.
  const before = playing.resyncs;
  await page.evaluate((d) => {
    const video = window.__cvdGrid.videos[1];
    video.currentTime = (video.currentTime + d / 2) % d;
  }, duration);
  await sleep(600);
  let now = await settled(page);
  sync.after_desync = measure(now, null, duration, { resyncs: now.resyncs - before });

  // 3. pause with the button, scrub the shared timeline to frame 5.
  await page.click(".cvd-player-grid button.cvd-play");
  await page.evaluate(() => {
    const slider = window.__cvdGrid.slider;
    slider.value = "5";
    slider.dispatchEvent(new Event("input", { bubbles: true }));
    slider.dispatchEvent(new Event("change", { bubbles: true }));
  });
  await sleep(300);
  now = await settled(page);
  sync.after_seek = measure(now, null, duration, { paused: now.paused.every(Boolean) && !now.playing });

  // 4. play again from there.
  await page.click(".cvd-player-grid button.cvd-play");
  const [resumed, again] = await observe(400);
  sync.playing_after_seek = measure(again, resumed, duration);
  sync.tolerance = frame;
  return sync;
}

/**
 * Scrubbing with the mouse: press on the timeline's thumb and drag it across. The players follow the
 * pointer; the node stays where it is and the graph does not pan (the drag belongs to the timeline).
 */
async function scrubFacts(page, mvNode) {
  const before = await page.evaluate((id) => {
    const g = window.__cvdGrid;
    if (g.clock.playing) g.playButton.click();
    g.clock.seekFrame(0);
    g.update();
    const node = window.app.graph.getNodeById(Number(id));
    return { pos: [node.pos[0], node.pos[1]], offset: [...window.app.canvas.ds.offset], scale: window.app.canvas.ds.scale };
  }, mvNode);
  await animationFrames(page);
  const slider = await elementBox(page, mvNode, "cvd_multiview_players", "input.cvd-timeline");
  const y = slider.y + slider.height / 2;
  // Range inputs put the thumb's centre at value/max of the track minus the thumb; start at the left end.
  await page.mouse.move(slider.x + 4, y);
  await page.mouse.down();
  const path = [];
  for (const fraction of [0.25, 0.5, 0.75, 1.0]) {
    await page.mouse.move(slider.x + 4 + fraction * (slider.width - 8), y, { steps: 4 });
    await animationFrames(page);
    path.push(await page.evaluate(() => ({ frame: window.__cvdGrid.clock.frame(), value: Number(window.__cvdGrid.slider.value) })));
  }
  await page.mouse.up();
  const after = await settled(page);
  const moved = await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(Number(id));
    return { pos: [node.pos[0], node.pos[1]], offset: [...window.app.canvas.ds.offset], scale: window.app.canvas.ds.scale };
  }, mvNode);
  const duration = config.frames / config.fps;
  return { path, frames: config.frames, final_frame: after.frame, paused: !after.playing,
    spread: loopSpread(after.times, duration),
    drift: Math.max(...after.times.map((t) => Math.abs(loopDiff(t, after.clock, duration)))),
    node_moved: moved.pos[0] !== before.pos[0] || moved.pos[1] !== before.pos[1],
    canvas_moved: moved.offset[0] !== before.offset[0] || moved.offset[1] !== before.offset[1] || moved.scale !== before.scale };
}

// ------------------------------------------------------------------------------ rig view

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
      width: canvas.width, height: canvas.height, zoom: view.zoom };
  }, { rig: rigNode, views });
}

/**
 * The mouse wheel over the rig view, as a user does it: point at the view, click it (in Vue nodes
 * mode the frontend leaves the wheel to a widget only once the widget has focus), wheel. The rig
 * zooms in and out; the graph's own zoom and pan stay as they were.
 */
async function wheelFacts(page, rigNode) {
  const box = await elementBox(page, rigNode, "cvd_rig_view", "canvas");
  const canvasView = () => page.evaluate(() => ({ scale: window.app.canvas.ds.scale, offset: [...window.app.canvas.ds.offset] }));
  const zoom = () => page.evaluate((rig) => widgetElement(rig, "cvd_rig_view").cvdController.zoom, rigNode);
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
  const before = { zoom: await zoom(), view: await canvasView() };
  await page.mouse.wheel(0, -300);
  await sleep(150);
  const zoomedIn = await zoom();
  await page.mouse.wheel(0, 600);
  await sleep(150);
  const zoomedOut = await zoom();
  const after = await canvasView();
  const focus = await page.evaluate((rig) => {
    const host = widgetElement(rig, "cvd_rig_view");
    const capture = host.closest('[data-capture-wheel="true"]');
    return { capture_element: !!capture, focused_inside: !!capture && capture.contains(document.activeElement) };
  }, rigNode);
  return { before: before.zoom, zoomed_in: zoomedIn, zoomed_out: zoomedOut, ...focus,
    canvas_scale_before: before.view.scale, canvas_scale_after: after.scale,
    canvas_moved: after.offset[0] !== before.view.offset[0] || after.offset[1] !== before.view.offset[1] };
}

// ------------------------------------------------------------------------------ camera path editor

const KEYFRAMES_URL = "/extensions/cvd-multiview/lib/keyframes.js";

/** Scale 1 and node `id` near the top-left of the free canvas area. */
async function showNode(page, id) {
  await page.evaluate(({ id, area }) => {
    const app = window.app;
    const node = app.graph.getNodeById(Number(id));
    const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const rect = app.canvas.canvas.getBoundingClientRect();
    const ds = app.canvas.ds;
    ds.scale = 1;
    ds.offset[0] = area.left + 16 - rect.left - node.pos[0];
    ds.offset[1] = area.top + 16 - rect.top + title - node.pos[1];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
  }, { id, area: report.free_area });
  await animationFrames(page);
  await sleep(200);
}

/** What the editor of the trajectory node shows, and the node's custom_json. */
async function editorState(page, id) {
  return page.evaluate((id) => {
    const node = window.app.graph.getNodeById(Number(id));
    const value = (name) => node.widgets.find((w) => w.name === name).value;
    const editor = node.widgets.find((w) => w.name === "cvd_camera_editor")?.element?.cvdController;
    return { preset: value("preset"), text: value("custom_json"), editing: !!editor?.editing,
      doc_text: editor?.doc ? JSON.stringify(editor.doc) : null, mode: editor?.mode ?? null };
  }, id);
}

/** Page position of a handle of the editor (its canvas box plus the editor's own projection). */
async function handlePoint(page, id, view, key, handle) {
  return page.evaluate(({ id, view, key, handle }) => {
    const editor = widgetElement(id, "cvd_camera_editor").cvdController;
    const rect = editor.canvas.getBoundingClientRect();
    const toPage = rect.width / editor.canvas.clientWidth;
    const [x, y] = editor.handleScreen(view, key, handle);
    return { x: rect.left + x * toPage, y: rect.top + y * toPage, pixels_per_unit: editor.pixelsPerUnit * editor.zoom,
      page_per_css: toPage };
  }, { id, view, key, handle });
}

async function clickEditorButton(page, id, label) {
  const box = await page.evaluate(({ id, label }) => {
    const host = widgetElement(id, "cvd_camera_editor");
    const b = [...host.querySelectorAll("button")].find((el) => el.textContent === label);
    const r = b.getBoundingClientRect();
    return { x: r.x + r.width / 2, y: r.y + r.height / 2 };
  }, { id, label });
  await page.mouse.click(box.x, box.y);
}

/** Drag view `view`'s last keyframe (camera position) by (dx, dy) page pixels with the mouse. */
async function dragLastKey(page, id, view, dx, dy) {
  // A rebuilt node (after undo) lays its widgets out on the next frames: wait until the editor has a size.
  const laidOut = await page.waitForFunction((id) => {
    const editor = widgetElement(id, "cvd_camera_editor")?.cvdController;
    return editor?.doc && editor.canvas.clientWidth > 50 && editor.canvas.getBoundingClientRect().width > 50;
  }, id, { timeout: 15000, polling: 100 }).then(() => true, () => false);
  if (!laidOut) {
    const state = await page.evaluate((id) => {
      const host = widgetElement(id, "cvd_camera_editor");
      const editor = host?.cvdController;
      const r = editor?.canvas.getBoundingClientRect();
      return { host: !!host, connected: host?.isConnected, has_doc: !!editor?.doc, canvas_connected: editor?.canvas.isConnected,
        client: editor?.canvas.clientWidth, rect: r && [r.x, r.y, r.width, r.height], message: editor?.message,
        host_rect: host && [host.getBoundingClientRect().width, host.getBoundingClientRect().height],
        hosts_in_page: [...document.querySelectorAll(".cvd-host.cvd_camera_editor")].map((h) => ({
          ours: h === host, node: h.closest(".lg-node")?.dataset?.nodeId ?? null, has_editor: !!h.cvdController,
          doc: !!h.cvdController?.doc })),
        node_widgets: window.app.graph.getNodeById(Number(id)).widgets.map((w) => w.name),
        vue_node: !!document.querySelector(`.lg-node[data-node-id="${id}"]`),
        vue_node_html: document.querySelector(`.lg-node[data-node-id="${id}"]`)?.innerHTML?.length ?? 0 };
    }, id);
    throw new Error(`the editor was not laid out: ${JSON.stringify(state)}`);
  }
  await page.evaluate((id) => widgetElement(id, "cvd_camera_editor").cvdController.draw(), id);
  const last = await page.evaluate(({ id, view }) => widgetElement(id, "cvd_camera_editor").cvdController
    .doc.views[view].keyframes.length - 1, { id, view });
  const start = await handlePoint(page, id, view, last, "position");
  await page.mouse.move(start.x, start.y);
  await page.mouse.down();
  await page.mouse.move(start.x + dx, start.y + dy, { steps: 6 });
  await page.mouse.up();
  await animationFrames(page);
  return { key: last, start };
}

/**
 * The camera path editor on CVD Camera Trajectory, as a user works with it: "Edit path" turns the
 * node's custom c2w rig into keyframes (custom_json), a mouse drag in the top view moves a keyframe by
 * a known screen offset, the queued graph's CVD Camera Preview (/history's cvd_cameras, expanded by
 * the Python) shows the moved path exactly as web/lib/keyframes.js expands it, Ctrl+Z restores the
 * previous path through the UI's change tracker. A second drag is left for the reload check.
 */
async function editorFacts(page, cfg) {
  const id = cfg.node;
  await showNode(page, id);
  await page.waitForFunction((id) => !!widgetElement(id, "cvd_camera_editor")?.cvdController?.doc, id,
    { timeout: 30000, polling: 100 });
  const facts = { initial: await editorState(page, id) };
  await clickEditorButton(page, id, "Edit path");
  await page.waitForFunction((id) => widgetElement(id, "cvd_camera_editor").cvdController.editing, id, { timeout: 30000 });
  await clickEditorButton(page, id, "top");
  await animationFrames(page);
  const before = await editorState(page, id);
  facts.opened = before;
  const [dx, dy] = cfg.drag;
  const drag = await dragLastKey(page, id, cfg.view, dx, dy);
  const after = await editorState(page, id);
  const a = JSON.parse(before.text), b = JSON.parse(after.text);
  const moved = b.views[cfg.view].keyframes[drag.key].position;
  const was = a.views[cfg.view].keyframes[drag.key].position;
  // Everything else must be untouched.
  const rest = JSON.parse(after.text);
  rest.views[cfg.view].keyframes[drag.key].position = was;
  facts.drag = { key: drag.key, pixels_per_unit: drag.start.pixels_per_unit, page_per_css: drag.start.page_per_css,
    delta: moved.map((c, i) => c - was[i]), moved, others_unchanged: JSON.stringify(rest) === before.text,
    editor_matches_widget: after.doc_text === after.text };
  // Queue the graph as it is now (the trajectory and its preview), as the Queue button would.
  facts.queue = await page.evaluate(async ({ id, preview, frames, width, height, keyframesUrl }) => {
    const { api } = await import("/scripts/api.js");
    const KF = await import(keyframesUrl);
    const { output } = await window.app.graphToPrompt();
    const prompt = { [id]: output[id], [preview]: output[preview] };
    const response = await fetch(api.apiURL("/prompt"), { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt, client_id: api.clientId }) });
    const queued = await response.json();
    if (response.status !== 200) return { status: response.status, body: queued };
    let cameras = null;
    for (let i = 0; i < 600 && !cameras; i++) {
      const history = await fetch(api.apiURL(`/history/${queued.prompt_id}`)).then((r) => r.json());
      cameras = history[queued.prompt_id]?.outputs?.[preview]?.cvd_cameras?.[0] ?? null;
      if (!cameras) await new Promise((r) => setTimeout(r, 100));
    }
    if (!cameras) return { status: 200, error: "no cvd_cameras in /history" };
    const doc = JSON.parse(output[id].inputs.custom_json);
    const mine = KF.camerasFromKeyframes(doc, frames, width, height);
    const diff = (x, y) => Math.max(...x.flat(4).map((v, i) => Math.abs(v - y.flat(4)[i])));
    const last = cameras.c2w[0].length - 1;
    return { status: 200, frames: cameras.c2w[0].length, views: cameras.c2w.length, labels: cameras.labels,
      c2w_diff: diff(cameras.c2w, mine.c2w), K_diff: diff(cameras.K, mine.K),
      prompt_custom_json: output[id].inputs.custom_json,
      last_translations: cameras.c2w.map((poses) => poses[last].slice(0, 3).map((row) => row[3])) };
  }, { id, preview: cfg.preview, frames: cfg.frames, width: cfg.width, height: cfg.height, keyframesUrl: KEYFRAMES_URL });
  facts.queue.prompt_is_widget = facts.queue.prompt_custom_json === after.text;
  delete facts.queue.prompt_custom_json;
  facts.moved_text = after.text;
  facts.before_text = before.text;

  // The editor's picture for the docs (the node's widget only).
  const shot = await elementBox(page, id, "cvd_camera_editor");
  await page.screenshot({ path: path.join(config.out_dir, "camera_editor.png"), clip: shot });

  // Undo, as a user: focus off any input, Ctrl+Z; the UI reloads the graph and the editor rebuilds.
  // The legacy UI's tracker may first snapshot a change made after the drag (the preview node grew when the
  // queued result arrived; its keyup handler can take that snapshot just before the undo runs), so its
  // first Ctrl+Z may undo only that: a user presses again. At most 3 presses, 60 s in all (the UI reloads
  // the whole graph on undo, which a CPU busy with sampling (CI) can stretch well past 15 s).
  // Another press only once the graph was reloaded (the node object is new) and still shows the drag.
  const restored = ({ id, text }) => {
    const node = window.app.graph.getNodeById(Number(id));
    const editor = node?.widgets?.find((w) => w.name === "cvd_camera_editor")?.element?.cvdController;
    return node?.widgets?.find((w) => w.name === "custom_json").value === text && !!editor?.doc
      && JSON.stringify(editor.doc) === text;
  };
  let undone = false, presses = 0;
  const deadline = Date.now() + 60000;
  while (!undone && presses < 3 && Date.now() < deadline) {
    await page.evaluate((id) => { window.app.graph.getNodeById(Number(id)).cvdBeforeUndo = true;
      document.activeElement?.blur?.(); }, id);
    await page.keyboard.press("Control+z");
    presses += 1;
    await page.waitForFunction(({ id, text, check }) => {
      const node = window.app.graph.getNodeById(Number(id));
      return (0, eval)(check)({ id, text }) || (node && !node.cvdBeforeUndo);
    }, { id, text: before.text, check: restored.toString() },
    { timeout: Math.max(1000, deadline - Date.now()), polling: 100 }).catch(() => null);
    await animationFrames(page);
    undone = await page.evaluate(({ id, text, check }) => (0, eval)(check)({ id, text }),
      { id, text: before.text, check: restored.toString() });
  }
  facts.undo = { restored: undone, presses, state: await editorState(page, id) };

  // A second drag (the same offset) for the reload check.
  await showNode(page, id);
  await dragLastKey(page, id, cfg.view, dx, dy);
  facts.final_text = (await editorState(page, id)).text;
  facts.second_drag_changed = facts.final_text !== before.text;
  return facts;
}

/** Reload the page: the UI restores the workflow; the editor shows the same keyframes. */
async function editorReloadFacts(page, cfg, expected) {
  await sleep(1500); // both UIs save the open workflow for reloads on a timer / after a change
  await page.reload({ waitUntil: "load", timeout: 60000 });
  await page.waitForFunction(() => window.app?.graph && window.app?.canvas, null, { timeout: 60000 });
  await settleStartup(page, false);
  await page.evaluate(() => {
    window.widgetElement = (id, name) => window.app.graph.getNodeById(Number(id)).widgets
      .find((w) => w.name === name).element;
  });
  const loaded = await page.waitForFunction((id) => !!window.app.graph.getNodeById(Number(id))?.widgets
    ?.find((w) => w.name === "cvd_camera_editor")?.element?.cvdController?.doc, cfg.node,
  { timeout: 30000, polling: 100 }).then(() => true, () => false);
  const state = loaded ? await editorState(page, cfg.node) : null;
  return { loaded, same_text: state?.text === expected, same_doc: state?.doc_text === expected,
    editing: state?.editing ?? false };
}

// ------------------------------------------------------------------------------ sizing, messages

/**
 * Node sizing. After execution the node has grown to hold its players (nothing clipped); then it is
 * resized twice: with node.setSize (the API both UIs have), and back by writing node.size[0] and
 * node.size[1] (the current frontend's node.size is a live view that resizes the node). The same
 * players re-lay out each time (nothing is rebuilt or lost).
 */
async function resizeFacts(page, mvNode) {
  return page.evaluate(async ({ mv, extensionUrl }) => {
    const { MIN_NODE_WIDTH } = await import(extensionUrl);
    const app = window.app;
    const node = app.graph.getNodeById(Number(mv));
    const host = widgetElement(mv, "cvd_multiview_players");
    const frames = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const redraw = async () => {
      app.canvas.setDirty(true, true);
      app.canvas.draw(true, true);
      await frames();
      await frames();
    };
    // The node's box on the page: its DOM in Vue nodes mode, else pos/size through the canvas transform.
    const nodeBox = () => {
      const vueNode = document.querySelector(`.lg-node[data-node-id="${mv}"]`);
      if (vueNode) return vueNode.getBoundingClientRect();
      const rect = app.canvas.canvas.getBoundingClientRect();
      const { scale, offset } = app.canvas.ds;
      const size = node.renderingSize ?? node.size;
      const left = rect.left + (node.pos[0] + offset[0]) * scale, top = rect.top + (node.pos[1] + offset[1]) * scale;
      return { left, top, right: left + size[0] * scale, bottom: top + size[1] * scale };
    };
    await redraw();
    const hostBox = host.getBoundingClientRect(), box = nodeBox();
    const fits = { host: [hostBox.left, hostBox.top, hostBox.right, hostBox.bottom],
      node: [box.left, box.top, box.right, box.bottom],
      inside: hostBox.left >= box.left - 1 && hostBox.right <= box.right + 1 && hostBox.bottom <= box.bottom + 1,
      host_height: host.offsetHeight, node_width: (box.right - box.left) / app.canvas.ds.scale,
      min_width: MIN_NODE_WIDTH };
    const before = host.offsetWidth;
    const size = [node.size[0], node.size[1]];
    node.setSize([size[0] + 200, size[1] + 150]);
    await redraw();
    const after = host.offsetWidth;
    const video = host.querySelector("video").getBoundingClientRect();
    node.size[0] = size[0]; // back, through the size view: compact screenshots
    node.size[1] = size[1];
    await redraw();
    return { fits, before, after, restored: host.offsetWidth, restored_size: [node.size[0], node.size[1]], size,
      same_players: host.cvdController === window.__cvdGrid, videos: host.querySelectorAll("video").length,
      video_height: video.height };
  }, { mv: mvNode, extensionUrl: EXTENSION_URL });
}

/**
 * A preview that cannot be built must tell the user, through the UI's own message surface: a toast
 * (app.extensionManager.toast) in the current frontend, a dialog in the legacy UI. Provoked for real:
 * the rig node receives camera data it cannot draw.
 */
async function messageFacts(page, rigNode) {
  const facts = await page.evaluate(async (rig) => {
    const node = window.app.graph.getNodeById(Number(rig));
    const before = document.body.innerText.split("CVD Multi-View").length;
    node.onExecuted({ cvd_cameras: [{ K: "not a matrix" }] });
    for (let i = 0; i < 50 && document.body.innerText.split("CVD Multi-View").length === before; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const toastApi = typeof window.app.extensionManager?.toast?.add === "function";
    const shown = document.body.innerText.split("CVD Multi-View").length > before;
    const text = [...document.querySelectorAll("body *")].filter((e) => e.children.length === 0
      && /could not be shown/.test(e.textContent)).map((e) => e.textContent).slice(0, 2);
    return { toast_api: toastApi, shown, text, rig_kept: !!widgetElement(rig, "cvd_rig_view").cvdController?.drawCount };
  }, rigNode);
  // Put the UI back: close the message (the legacy dialog is modal; toasts close themselves).
  if (await page.locator(".comfy-modal").filter({ hasText: "CVD Multi-View" }).count()) {
    facts.surface = "dialog";
    await page.locator(".comfy-modal").filter({ hasText: "CVD Multi-View" }).getByRole("button", { name: "Close" }).click();
  } else {
    facts.surface = facts.shown ? "toast" : null;
    await page.evaluate(() => window.app.extensionManager?.toast?.removeAll?.());
  }
  return facts;
}

// ------------------------------------------------------------------------------ console

/**
 * Deprecation warnings in the console, each traced to its cause: a stack frame in the pack's files,
 * the pack named in the message, or an import of a deprecated module (the frontend's shims warn when
 * they are first imported; in this server the pack is the only extension that is not the frontend's
 * own, which `third_party_extensions` shows).
 */
async function deprecationFacts(page) {
  const facts = await page.evaluate(async (packPart) => {
    const listed = await fetch("/extensions").then((r) => r.json(), () => []);
    const thirdParty = listed.filter((url) => !url.startsWith("/extensions/core/"));
    const warnings = (window.__cvdConsole ?? []).map((w) => ({ ...w, stack: w.stack.split("\n").slice(1, 12).join("\n") }));
    return { third_party_extensions: thirdParty, only_pack: thirdParty.every((url) => url.includes(packPart)), warnings };
  }, PACK_URL_PART);
  for (const warning of facts.warnings) {
    const importShim = /Importing from "scripts\//.test(warning.text);
    warning.by_pack = warning.stack.includes(PACK_URL_PART) || /cvd/i.test(warning.text)
      || (importShim && facts.only_pack);
  }
  facts.by_pack = facts.warnings.filter((w) => w.by_pack);
  return facts;
}

// ------------------------------------------------------------------------------ helpers

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

/**
 * Screenshot of a node at scale 1 near the top-left of the free canvas area, or (`background`: the
 * box of an earlier shot) of the same box over empty canvas, far from every node. Returns how much
 * of the box something else covers (a panel, a toast), sampled with elementFromPoint: every point
 * must be the node (its DOM in Vue nodes mode, its widget elements) or the bare canvas; for the
 * background, the bare canvas only.
 */
async function shootNode(page, nodeId, file, background = null) {
  const clip = await page.evaluate(({ id, empty, area }) => {
    const app = window.app;
    const node = app.graph.getNodeById(Number(id));
    const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const rect = app.canvas.canvas.getBoundingClientRect();
    const left = area.left + 16, top = area.top + 16;
    const ds = app.canvas.ds;
    ds.scale = 1;
    const far = empty ? 100000 : 0;
    ds.offset[0] = left - rect.left - node.pos[0] + far;
    ds.offset[1] = top - rect.top + title - node.pos[1] + far;
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    const size = node.renderingSize ?? node.size;
    return { x: left - 6, y: top - 6, width: Math.ceil(size[0]) + 12, height: Math.ceil(size[1]) + title + 12 };
  }, { id: nodeId, empty: !!background, area: report.free_area });
  // Two animation frames: DOM widgets (and Vue nodes) follow the canvas on its next draws.
  await animationFrames(page);
  await sleep(300);
  const facts = await page.evaluate(({ id, clip, background }) => {
    const app = window.app;
    const node = app.graph.getNodeById(Number(id));
    const vueNode = document.querySelector(`.lg-node[data-node-id="${id}"]`);
    let box = clip;
    if (background) {
      box = { ...clip, width: background.width, height: background.height };
    } else if (vueNode) {
      // In Vue nodes mode the node is a DOM box sized by its content: shoot that box.
      const r = vueNode.getBoundingClientRect();
      box = { x: r.x - 6, y: r.y - 6, width: r.width + 12, height: r.height + 12 };
    }
    const own = (el) => el === app.canvas.canvas || (!background && ((vueNode && vueNode.contains(el))
      || (node.widgets ?? []).some((w) => w.element && (w.element === el || w.element.contains(el)))));
    let covered = 0, total = 0;
    const samples = [];
    for (let y = box.y + 3; y < box.y + box.height - 2; y += 16) {
      for (let x = box.x + 3; x < box.x + box.width - 2; x += 16) {
        total += 1;
        const el = document.elementFromPoint(x, y);
        if (!own(el)) {
          covered += 1;
          if (samples.length < 5) samples.push(`${Math.round(x)},${Math.round(y)}: ${el?.tagName}.${el?.className}`);
        }
      }
    }
    return { box, covered: covered / total, samples };
  }, { id: nodeId, clip, background });
  await page.screenshot({ path: file, clip: facts.box });
  return { clip: facts.box, covered: facts.covered, covered_samples: facts.samples };
}

/**
 * The paused grid stepped through the shared timeline (every other frame), one screenshot of the same
 * box per step: the frames of the README's animated picture, and proof that all players follow it.
 */
async function captureTimeline(page, clip) {
  const files = [];
  for (let frame = 0; frame < config.frames; frame += 2) {
    await page.evaluate((value) => {
      const slider = window.__cvdGrid.slider;
      slider.value = String(value);
      slider.dispatchEvent(new Event("input", { bubbles: true }));
      slider.dispatchEvent(new Event("change", { bubbles: true }));
    }, frame);
    await settled(page);
    await animationFrames(page);
    const file = path.join(config.out_dir, `players_${String(frame).padStart(2, "0")}.png`);
    await page.screenshot({ path: file, clip });
    files.push(path.basename(file));
  }
  // Where each player sits inside the box, so the check can look at the videos alone.
  const videos = await page.evaluate((box) => window.__cvdGrid.videos.map((v) => {
    const r = v.getBoundingClientRect();
    return [Math.round(r.x - box.x), Math.round(r.y - box.y), Math.round(r.width), Math.round(r.height)];
  }), clip);
  return { files, videos };
}

main().then(() => { writeReport(); }, (error) => {
  report.error = String(error?.stack ?? error);
  writeReport();
  console.error(report.error);
  process.exit(1);
});
