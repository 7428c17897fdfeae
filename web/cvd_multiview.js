// cvd-multiview web extension: synchronized multi-view players, an interactive 3-D rig view, and
// sampling progress text on the pack's nodes, and the camera path editor on CVD Camera Trajectory.
//
// Only extension APIs that both the 2024 legacy UI and the current ComfyUI frontend (1.5x, both canvas
// modes) provide are used: app.registerExtension, beforeRegisterNodeDef, nodeCreated, node.onExecuted,
// node.onNodeCreated, node.onConfigure, node.addDOMWidget, node.setSize, api.fetchApi and api
// "progress"/"executing" events; the only modules imported are
// scripts/app.js and scripts/api.js (the frontend's other legacy modules are deprecated). Every hook is
// wrapped so that a failure here leaves the node's plain outputs (the poster PNG, the preview image)
// untouched, and tells the user (a toast where the UI has them). Nothing is stored outside widget
// values: the players and the rig view are rebuilt from the node's `ui` output on each execution.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { PlayerGrid, preferredHeight } from "./lib/player_grid.js";
import { RigView } from "./lib/rig_view.js";
import { KeyframeEditor } from "./lib/keyframe_editor.js";
import { isKeyframesForm, keyframesText } from "./lib/keyframes.js";

export const EXTENSION_NAME = "cvd.multiview";
const MULTIVIEW_NODES = new Set(["CVD_SaveMultiViewVideo", "CVD_PreviewMultiView"]);
const RIG_NODES = new Set(["CVD_CameraPreview"]);
const TRAJECTORY_NODES = new Set(["CVD_CameraTrajectory"]);
const PACK_PREFIX = "CVD_";
const GRID_WIDGET = "cvd_multiview_players";
const RIG_WIDGET = "cvd_rig_view";
const EDITOR_WIDGET = "cvd_camera_editor";
const CUSTOM_PRESET = "custom_json";
const KEYFRAMES_ROUTE = "/cvd/keyframes";
export const MIN_NODE_WIDTH = 420; // a 2 x 2 grid of players stays legible

const MESSAGE_TITLE = "CVD Multi-View";

const recentMessages = new Map();

/**
 * Tell the user something went wrong, through the UI's own message surface: the current frontend's
 * toasts (app.extensionManager.toast), else the legacy UI's dialog; always on the console too.
 * Returns the surface used.
 */
export function notify(detail, error) {
  console.warn(`[cvd-multiview] ${detail}`, error ?? "");
  const text = error?.message ? `${detail} (${error.message})` : detail;
  // The same failure on every animation frame or progress message must not bury the UI in toasts.
  const now = Date.now();
  if (now - (recentMessages.get(text) ?? -Infinity) < 5000) return "repeated";
  recentMessages.set(text, now);
  try {
    const toast = app?.extensionManager?.toast;
    if (typeof toast?.add === "function") {
      toast.add({ severity: "warn", summary: MESSAGE_TITLE, detail: text, life: 8000 });
      return "toast";
    }
    if (typeof app?.ui?.dialog?.show === "function") {
      app.ui.dialog.show(`${MESSAGE_TITLE}: ${text}`);
      return "dialog";
    }
  } catch (failure) {
    console.warn("[cvd-multiview] could not show the message", failure);
  }
  return "console";
}

function warn(what, error) {
  notify(`${what}; the plain outputs are still there.`, error);
}

/** Run `fn`; a failure is reported (see `notify`) instead of thrown: the extension must never break the UI. */
function guarded(what, fn) {
  try {
    return fn();
  } catch (error) {
    warn(what, error);
    return undefined;
  }
}

/** URL of an output file via /view; `name` may carry a sub-path (PNG sequences). */
export function viewUrl(file, name) {
  let filename = String(name ?? file.filename);
  let subfolder = String(file.subfolder ?? "");
  const slash = filename.lastIndexOf("/");
  if (slash >= 0) {
    subfolder = [subfolder, filename.slice(0, slash)].filter(Boolean).join("/");
    filename = filename.slice(slash + 1);
  }
  const query = new URLSearchParams({ filename, subfolder, type: String(file.type ?? "output") });
  const route = `/view?${query}`;
  return typeof api?.apiURL === "function" ? api.apiURL(route) : route;
}

function lastOf(list) {
  return Array.isArray(list) && list.length ? list[list.length - 1] : null;
}

// ------------------------------------------------------------------------------------ DOM widgets

/** The node's preview widget `name`, created on first use; null where addDOMWidget is missing. */
function previewWidget(node, name, minHeight) {
  const existing = node.widgets?.find((w) => w.name === name);
  if (existing) return existing;
  if (typeof node.addDOMWidget !== "function") return null;
  const host = document.createElement("div");
  host.className = `cvd-host ${name}`;
  Object.assign(host.style, { boxSizing: "border-box", overflow: "hidden" });
  const widget = node.addDOMWidget(name, "cvd_preview", host, {
    serialize: false, // never part of the prompt
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => minHeight(node),
  });
  widget.serialize = false; // never part of the saved workflow's widget values where honoured
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    guarded("Stopping the removed preview failed", () => host.cvdController?.dispose());
    return onRemoved?.apply(this, arguments);
  };
  return widget;
}

/** Grow the node so the new widget fits (never shrink what the user chose). */
function fitNode(node) {
  const wanted = node.computeSize?.() ?? node.size;
  node.setSize?.([Math.max(node.size[0], wanted[0], MIN_NODE_WIDTH), Math.max(node.size[1], wanted[1])]);
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

/**
 * Replace the controller living in a widget's element. The new one is built first, so that output
 * it cannot show (it throws) leaves the previous view working; the old players are stopped after.
 */
function replaceController(widget, make) {
  const host = widget.element;
  const old = host.cvdController;
  const made = make();
  host.replaceChildren(made.element);
  host.cvdController = made.controller;
  guarded("Stopping the previous preview failed", () => old?.dispose());
  return made.controller;
}

export function showMultiView(node, output) {
  const entry = lastOf(output?.cvd_multiview);
  if (!entry || !Array.isArray(entry.views) || !entry.views.length) return null;
  const widget = previewWidget(node, GRID_WIDGET, (n) => preferredHeight(n.cvdEntry ?? entry, n.size[0]));
  if (!widget) return null;
  const grid = replaceController(widget, () => {
    const element = document.createElement("div");
    Object.assign(element.style, { width: "100%", height: "100%" });
    return { element, controller: new PlayerGrid(element, entry, viewUrl) };
  });
  node.cvdEntry = entry;
  fitNode(node);
  return grid;
}

export function showRig(node, output) {
  const cameras = lastOf(output?.cvd_cameras);
  if (!cameras) return null;
  const widget = previewWidget(node, RIG_WIDGET, (n) => Math.round(Math.max(200, Math.min(480, n.size[0] * 0.62))));
  if (!widget) return null;
  // The current frontend's Vue nodes leave the wheel to an element only while focus is inside an
  // element marked data-capture-wheel (otherwise the wheel zooms the graph, as over any widget):
  // the view takes focus when it is clicked or dragged, and then the wheel zooms the rig.
  widget.element.dataset.captureWheel = "true";
  const view = replaceController(widget, () => {
    const canvas = document.createElement("canvas");
    canvas.className = "cvd-rig-canvas";
    canvas.tabIndex = 0;
    Object.assign(canvas.style, {
      width: "100%", height: "100%", display: "block", cursor: "grab", touchAction: "none", outline: "none",
    });
    return { element: canvas, controller: new RigView(canvas, cameras) };
  });
  fitNode(node);
  view.draw(); // again at the fitted size
  return view;
}

// ------------------------------------------------------------------------------------ camera path editor

function widgetOf(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** CVD Camera Trajectory's widget values by name (what POST /cvd/keyframes and the prompt read). */
function trajectoryValues(node) {
  const values = {};
  for (const w of node.widgets ?? []) if (w.name !== EDITOR_WIDGET && w.type !== "cvd_preview") values[w.name] = w.value;
  return values;
}

/**
 * Write a widget as the user would, and let the UI's change tracker take its snapshot (undo). Both
 * trackers (the legacy UI's undoRedo extension and the current frontend's ChangeTracker) snapshot the
 * graph on the window's mouseup; the editor's pointer events cancel the browser's own mouse events,
 * so that mouseup is sent here.
 */
function writeWidgets(node, values) {
  node.cvdWriting = true;
  try {
    for (const [name, value] of Object.entries(values)) {
      const w = widgetOf(node, name);
      if (!w || w.value === value) continue;
      w.value = value;
      w.callback?.(value, app.canvas, node);
    }
  } finally {
    node.cvdWriting = false;
  }
  node.setDirtyCanvas?.(true, true);
  window.dispatchEvent(new MouseEvent("mouseup"));
}

/** The keyframes the node's settings stand for: custom_json read back here, or the server's conversion. */
async function editorKeyframes(node) {
  const values = trajectoryValues(node);
  if (values.preset === CUSTOM_PRESET) {
    let data = null;
    try { data = JSON.parse(values.custom_json); } catch { /* the server's conversion explains the error */ }
    if (isKeyframesForm(data)) return { doc: data, keyframes: true };
  }
  const response = await api.fetchApi(KEYFRAMES_ROUTE, { method: "POST", body: JSON.stringify(values),
    headers: { "Content-Type": "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ?? `HTTP ${response.status}`);
  return { doc: body.keyframes, keyframes: false };
}

/**
 * The current frontend's Vue nodes keep showing a DOM widget's element from before an undo (the graph is
 * reloaded and the node rebuilt, but the node's widget component, keyed by node id and widget name,
 * stays mounted with the old node's element). Move this node's editor into the element on show, so
 * the editor the user sees is the one bound to the live node.
 */
function adoptShownHost(node, name) {
  const own = widgetOf(node, name)?.element;
  if (!own || own.isConnected || node.id == null) return false;
  const shown = document.querySelector(`.lg-node[data-node-id="${node.id}"] .cvd-host.${name}`);
  if (!shown || shown === own || shown.cvdController === own.cvdController) return false;
  guarded("Stopping the previous editor failed", () => shown.cvdController?.dispose());
  shown.replaceChildren(...own.childNodes);
  Object.assign(shown.style, { display: own.style.display, flexDirection: own.style.flexDirection });
  shown.cvdController = own.cvdController;
  return true;
}

/** (Re)load the editor from the node's widgets: keyframes open in edit mode, anything else is shown. */
export async function loadEditor(node) {
  const editor = widgetOf(node, EDITOR_WIDGET)?.element?.cvdController;
  if (!editor) return null;
  const ticket = (node.cvdEditorTicket = (node.cvdEditorTicket ?? 0) + 1);
  try {
    const { doc, keyframes } = await editorKeyframes(node);
    if (ticket === node.cvdEditorTicket) editor.setDoc(doc, { editing: keyframes });
    fitNode(node); // a loaded workflow may have sized the node before it had an editor (only grows)
  } catch (error) {
    if (ticket === node.cvdEditorTicket) editor.setMessage(`The rig cannot be shown: ${error.message ?? error}`);
  }
  // The node's widgets are on the page a few frames after a graph (re)load.
  for (let i = 0; i < 20 && !widgetOf(node, EDITOR_WIDGET).element.isConnected && !adoptShownHost(node, EDITOR_WIDGET); i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  editor.draw();
  return editor;
}

/** Edit mode: the current rig becomes keyframes in custom_json (preset custom_json). */
async function startEditing(node) {
  const editor = widgetOf(node, EDITOR_WIDGET).element.cvdController;
  const { doc } = await editorKeyframes(node);
  writeWidgets(node, { preset: CUSTOM_PRESET, custom_json: keyframesText(doc) });
  editor.setDoc(doc, { editing: true });
}

export function addCameraEditor(node) {
  if (widgetOf(node, EDITOR_WIDGET)) return widgetOf(node, EDITOR_WIDGET).element.cvdController;
  const widget = previewWidget(node, EDITOR_WIDGET, (n) => Math.round(Math.max(320, Math.min(480, n.size[0] * 0.85))));
  if (!widget) return null;
  widget.element.dataset.captureWheel = "true";
  const editor = new KeyframeEditor(widget.element, {
    frames: () => Number(widgetOf(node, "frames")?.value ?? 16),
    onChange: (doc) => guarded("Saving the camera path failed", () => writeWidgets(node, { custom_json: keyframesText(doc) })),
    onEdit: () => startEditing(node).catch((error) => notify("The rig could not be opened for editing", error)),
  });
  widget.element.cvdController = editor;
  // Settings typed into the node re-show the rig (not the editor's own writes).
  for (const w of node.widgets ?? []) {
    if (w === widget) continue;
    const callback = w.callback;
    w.callback = function () {
      const result = callback?.apply(this, arguments);
      if (!node.cvdWriting) {
        clearTimeout(node.cvdEditorTimer);
        node.cvdEditorTimer = setTimeout(() => loadEditor(node), 300);
      }
      return result;
    };
  }
  fitNode(node);
  return editor;
}

// ------------------------------------------------------------------------------------ progress

const progressByNode = new Map();

/** "step i/N" for a node that is reporting progress now, else "". */
export function progressText(nodeId) {
  const p = progressByNode.get(String(nodeId));
  return p && p.max ? `step ${p.value}/${p.max}` : "";
}

function executingNodeId(detail) {
  // Legacy UI and the current frontend both pass the node id (string) or null; older builds an object.
  return detail && typeof detail === "object" ? detail.node ?? null : detail ?? null;
}

function listenForProgress() {
  if (!api?.addEventListener) return;
  api.addEventListener("progress", ({ detail }) => guarded("The progress text failed", () => {
    if (detail?.node == null) return;
    progressByNode.set(String(detail.node), { value: Number(detail.value), max: Number(detail.max) });
    app.graph?.setDirtyCanvas?.(true, false);
  }));
  api.addEventListener("executing", ({ detail }) => guarded("The progress text failed", () => {
    const running = executingNodeId(detail);
    for (const id of [...progressByNode.keys()]) if (id !== String(running)) progressByNode.delete(id);
    app.graph?.setDirtyCanvas?.(true, false);
  }));
  for (const type of ["execution_error", "execution_interrupted", "execution_success"]) {
    api.addEventListener(type, () => { progressByNode.clear(); app.graph?.setDirtyCanvas?.(true, false); });
  }
}

function drawProgress(node, ctx) {
  const text = progressText(node.id);
  if (!text || node.flags?.collapsed) return;
  const titleHeight = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  ctx.save();
  ctx.font = "12px sans-serif";
  const width = ctx.measureText(text).width + 12;
  const x = node.size[0] - width - 6;
  const y = -titleHeight + 6;
  ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
  ctx.fillRect(x, y, width, titleHeight - 12);
  ctx.fillStyle = "#9fe89f";
  ctx.textBaseline = "middle";
  ctx.fillText(text, x + 6, y + (titleHeight - 12) / 2);
  ctx.restore();
}

// ------------------------------------------------------------------------------------ registration

function chain(prototype, method, after, what = method) {
  const original = prototype[method];
  prototype[method] = function () {
    const result = original?.apply(this, arguments);
    guarded(what, () => after.apply(this, arguments));
    return result;
  };
}

const extension = {
  name: EXTENSION_NAME,
  async setup() {
    guarded("Listening for progress failed", listenForProgress);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    guarded("Setting up the pack's nodes failed", () => {
      const name = nodeData?.name ?? "";
      if (!name.startsWith(PACK_PREFIX)) return;
      chain(nodeType.prototype, "onDrawForeground", function (ctx) { drawProgress(this, ctx); });
      if (MULTIVIEW_NODES.has(name)) {
        chain(nodeType.prototype, "onExecuted", function (output) { showMultiView(this, output); },
          "The multi-view players could not be shown");
      }
      if (TRAJECTORY_NODES.has(name)) {
        chain(nodeType.prototype, "onNodeCreated", function () {
          addCameraEditor(this);
          // Widget values arrive after creation (a loaded workflow's configure): load once they are set.
          setTimeout(() => loadEditor(this), 0);
        }, "The camera path editor could not be added");
        chain(nodeType.prototype, "onConfigure", function () { loadEditor(this); },
          "The camera path editor could not be loaded");
      }
      if (RIG_NODES.has(name)) {
        chain(nodeType.prototype, "onExecuted", function (output) { showRig(this, output); },
          "The 3-D rig view could not be shown");
      }
    });
  },
  nodeCreated(node) {
    // Mark the pack's nodes so that tests and other extensions can tell the extension ran for them.
    guarded("Marking a pack node failed", () => {
      const type = node?.comfyClass ?? node?.type ?? "";
      if (String(type).startsWith(PACK_PREFIX)) node.cvdExtension = EXTENSION_NAME;
    });
  },
};

guarded("Registering the extension failed", () => app.registerExtension(extension));
