// The camera path editor of CVD Camera Trajectory: the rig's paths on a 2-D canvas and, in edit mode,
// drag handles on every keyframe (a filled dot: the camera position; a square: its look-at target).
//
// Views: "orbit" (perspective, drag with the mouse to turn; a handle moves parallel to the screen) and
// the snapped orthographic views "top" (x right, z up the screen: a drag moves x and z), "side" (z right,
// y down: z and y) and "front" (x right, y down: x and y), where a drag of d pixels moves a handle by
// exactly d / pixelsPerUnit along the two axes on screen. The maths is web/lib/keyframes.js; every edit
// goes through `onChange(doc)`, which writes custom_json (the node's widget), so the workflow, undo and
// reload all see the same keyframes.

import { listenWheelZoom, orbitProjector, viewColor } from "./rig_view.js";
import * as KF from "./keyframes.js";

const BACKGROUND = "#f8f8f6";
const PATH_FRAMES = 48; // samples per drawn path (the node's frame count may be small)
const HANDLE_RADIUS = 6; // CSS pixels
export const MODES = ["orbit", "top", "side", "front"];
export const SHARED_FRAME_WARNING = "Frame 0 is unlocked: CVD expects every view to start at the same pose.";

// Screen axes of the snapped views: [world axis shown to the right, world axis shown downwards, sign of down].
const ORTHO = { top: [0, 2, -1], side: [2, 1, 1], front: [0, 1, 1] };

function button(text, title, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.title = title;
  Object.assign(b.style, { font: "11px sans-serif", padding: "1px 5px", margin: "0 2px 2px 0", cursor: "pointer" });
  b.addEventListener("click", (event) => { event.stopPropagation(); onClick(); });
  b.addEventListener("pointerdown", (event) => event.stopPropagation());
  return b;
}

export class KeyframeEditor {
  /**
   * @param {HTMLElement} host  element to build into (emptied)
   * @param {{frames: () => number, onChange: (doc) => void, onEdit: () => void}} options
   *   onChange: an edit was made (write it to the node); onEdit: the user asked to edit a non-keyframe rig.
   */
  constructor(host, options) {
    this.host = host;
    this.options = options;
    this.doc = null;
    this.editing = false;
    this.mode = "top";
    this.selected = { view: 0, key: 0 };
    this.yaw = -0.7;
    this.pitch = 0.45;
    this.zoom = 1;
    this.drawCount = 0;
    this.message = "";
    this.listeners = [];
    this.build();
  }

  build() {
    const bar = document.createElement("div");
    Object.assign(bar.style, { display: "flex", flexWrap: "wrap", alignItems: "center", minHeight: "22px" });
    this.editButton = button("Edit path", "Edit the rig as keyframes (writes custom_json)", () => this.options.onEdit());
    this.modeButtons = MODES.map((mode) => button(mode, `${mode} view`, () => this.setMode(mode)));
    this.editTools = [
      button("+ key", "Add a keyframe to the selected view (in its longest segment)", () => this.edit((d) => KF.addKeyframe(d, this.selected.view))),
      button("− key", "Delete the selected keyframe", () => this.edit((d) => KF.deleteKeyframe(d, this.selected.view, this.selected.key))),
      button("+ view", "Add a view", () => this.edit((d) => KF.addView(d))),
      button("dup view", "Duplicate the selected view (mirrored in x)", () => this.edit((d) => KF.duplicateView(d, this.selected.view))),
      button("− view", "Delete the selected view", () => this.edit((d) => KF.deleteView(d, this.selected.view))),
    ];
    // Roll and field of view of the selected keyframe (empty: not set; fov then comes from the view or CVD's K).
    this.rollInput = this.numberInput("roll°", "Roll of the selected keyframe in degrees (positive: clockwise seen from behind)",
      (value) => this.edit((d) => KF.setKeyframeValues(d, this.selected.view, this.selected.key, { roll_deg: value })));
    this.fovInput = this.numberInput("fov°", "Horizontal field of view of the selected keyframe in degrees (empty: the view's)",
      (value) => this.edit((d) => KF.setKeyframeValues(d, this.selected.view, this.selected.key, { fov_deg: value })));
    this.editTools.push(this.rollInput.label, this.fovInput.label);
    const lock = document.createElement("label");
    Object.assign(lock.style, { font: "11px sans-serif", marginLeft: "4px" });
    this.unlockBox = document.createElement("input");
    this.unlockBox.type = "checkbox";
    this.unlockBox.addEventListener("change", () => this.edit((d) => KF.setSharedFirstFrame(d, !this.unlockBox.checked)));
    lock.append(this.unlockBox, " unlock frame 0");
    this.editTools.push(lock);
    bar.append(this.editButton, ...this.modeButtons, ...this.editTools);
    this.canvas = document.createElement("canvas");
    this.canvas.className = "cvd-keyframe-canvas";
    this.canvas.tabIndex = 0;
    Object.assign(this.canvas.style, { width: "100%", flex: "1 1 auto", minHeight: "0", display: "block",
      touchAction: "none", outline: "none", cursor: "crosshair" });
    this.status = document.createElement("div");
    Object.assign(this.status.style, { font: "11px sans-serif", color: "#b35c00", minHeight: "14px" });
    Object.assign(this.host.style, { display: "flex", flexDirection: "column" });
    this.host.replaceChildren(bar, this.canvas, this.status);
    this.attachMouse();
    this.resizeObserver = typeof ResizeObserver === "function" ? new ResizeObserver(() => this.draw()) : null;
    this.resizeObserver?.observe(this.canvas);
    this.updateBar();
  }

  numberInput(text, title, onValue) {
    const label = document.createElement("label");
    Object.assign(label.style, { font: "11px sans-serif", marginRight: "3px" });
    label.title = title;
    const input = document.createElement("input");
    input.type = "number";
    input.step = "1";
    Object.assign(input.style, { width: "46px", font: "11px sans-serif" });
    // Keys typed here are the input's, not the graph's shortcuts (Delete would delete the node).
    for (const type of ["keydown", "keyup", "pointerdown", "wheel"]) input.addEventListener(type, (event) => event.stopPropagation());
    input.addEventListener("change", () => onValue(input.value.trim() === "" ? null : Number(input.value)));
    label.append(`${text} `, input);
    return { label, input };
  }

  /** Show `doc` (a parsed cvd_keyframes/1 document); `editing`: with handles. */
  setDoc(doc, { editing = this.editing, message = "" } = {}) {
    this.doc = doc;
    this.editing = editing;
    this.message = message;
    if (doc) {
      const v = Math.min(this.selected.view, doc.views.length - 1);
      this.selected = { view: v, key: Math.min(this.selected.key, doc.views[v].keyframes.length - 1) };
      this.fit();
    }
    this.updateBar();
    this.draw();
  }

  setMessage(message) {
    this.message = message;
    this.updateBar();
    this.draw();
  }

  setMode(mode) {
    this.mode = mode;
    this.fit();
    this.updateBar();
    this.draw();
  }

  updateBar() {
    this.editButton.style.display = this.editing ? "none" : "";
    for (const tool of this.editTools) tool.style.display = this.editing ? "" : "none";
    this.modeButtons.forEach((b, i) => { b.style.fontWeight = MODES[i] === this.mode ? "bold" : "normal"; });
    const unlocked = this.doc && this.doc.shared_first_frame === false;
    this.unlockBox.checked = !!unlocked;
    const key = this.doc?.views[this.selected.view]?.keyframes[this.selected.key];
    for (const [field, { input }] of [["roll_deg", this.rollInput], ["fov_deg", this.fovInput]]) {
      if (document.activeElement !== input) input.value = key?.[field] != null ? String(Math.round(key[field] * 100) / 100) : "";
    }
    this.status.textContent = this.message || (unlocked ? SHARED_FRAME_WARNING : "");
  }

  /** Apply a pure edit (web/lib/keyframes.js) and report it; a refused edit is shown, not thrown. */
  edit(operation) {
    if (!this.doc) return;
    let next;
    try {
      next = operation(this.doc);
    } catch (error) {
      this.setMessage(String(error.message ?? error));
      return;
    }
    this.doc = next;
    this.selected.view = Math.min(this.selected.view, next.views.length - 1);
    this.selected.key = Math.min(this.selected.key, next.views[this.selected.view].keyframes.length - 1);
    this.message = "";
    this.updateBar();
    this.draw();
    this.options.onChange(next);
  }

  // ---------------------------------------------------------------------------------- geometry

  worldPaths() {
    return this.doc.views.map((view) => KF.expandView(view, PATH_FRAMES, this.doc.fov_deg ?? null).c2w);
  }

  /** Centre and size of the view: every path sample and handle (kept until the next fit, so drags are linear). */
  fit() {
    if (!this.doc) return;
    const points = this.worldPaths().flat().map((m) => [m[0][3], m[1][3], m[2][3]]);
    for (const view of this.doc.views) for (const key of view.keyframes) points.push(key.position, key.target);
    const lo = [0, 1, 2].map((a) => Math.min(...points.map((p) => p[a])));
    const hi = [0, 1, 2].map((a) => Math.max(...points.map((p) => p[a])));
    this.center = lo.map((l, a) => (l + hi[a]) / 2);
    this.radius = Math.max(0.05, ...points.map((p) => Math.hypot(p[0] - this.center[0], p[1] - this.center[1], p[2] - this.center[2])));
    const { width, height } = this.cssSize();
    this.pixelsPerUnit = (0.42 * Math.min(width, height)) / this.radius;
  }

  cssSize() {
    return { width: Math.max(1, this.canvas.clientWidth), height: Math.max(1, this.canvas.clientHeight) };
  }

  /** World point -> [x, y] in CSS pixels of the canvas (null behind the orbit camera). */
  project(point) {
    const { width, height } = this.cssSize();
    if (this.mode === "orbit") {
      const q = orbitProjector({ center: this.center, radius: this.radius, yaw: this.yaw, pitch: this.pitch,
        zoom: this.zoom, width, height })(point);
      return q ? [q[0], q[1]] : null;
    }
    const [right, down, sign] = ORTHO[this.mode];
    const s = this.pixelsPerUnit * this.zoom;
    return [width / 2 + s * (point[right] - this.center[right]), height / 2 + sign * s * (point[down] - this.center[down])];
  }

  /** The world offset a drag of (dx, dy) CSS pixels gives a handle at `point`. */
  unprojectDelta(point, dx, dy) {
    const delta = [0, 0, 0];
    if (this.mode === "orbit") {
      // Parallel to the screen through the point: the projector's right/down axes, scaled by depth.
      const { width, height } = this.cssSize();
      const forward = [Math.cos(this.pitch) * Math.sin(this.yaw), Math.sin(this.pitch), Math.cos(this.pitch) * Math.cos(this.yaw)];
      const rightLength = Math.hypot(forward[2], forward[0]) || 1;
      const right = [forward[2] / rightLength, 0, -forward[0] / rightLength];
      const down = [forward[1] * right[2] - forward[2] * right[1], forward[2] * right[0] - forward[0] * right[2],
        forward[0] * right[1] - forward[1] * right[0]];
      const distance = (2.1 * this.radius) / this.zoom;
      const eye = this.center.map((c, a) => c - forward[a] * distance);
      const depth = (point[0] - eye[0]) * forward[0] + (point[1] - eye[1]) * forward[1] + (point[2] - eye[2]) * forward[2];
      const perPixel = depth / (0.9 * Math.min(width, height));
      for (let a = 0; a < 3; a++) delta[a] = (dx * right[a] + dy * down[a]) * perPixel;
      return delta;
    }
    const [right, down, sign] = ORTHO[this.mode];
    const s = this.pixelsPerUnit * this.zoom;
    delta[right] = dx / s;
    delta[down] = (sign * dy) / s;
    return delta;
  }

  /** CSS-pixel position of a handle ("position" or "target") on the canvas, for tests and hit testing. */
  handleScreen(view, key, handle) {
    return this.project(this.doc.views[view].keyframes[key][handle]);
  }

  hit(x, y) {
    if (!this.doc || !this.editing) return null;
    let best = null;
    this.doc.views.forEach((view, v) => view.keyframes.forEach((key, k) => {
      for (const handle of ["position", "target"]) {
        const p = this.project(key[handle]);
        if (!p) continue;
        const d = Math.hypot(p[0] - x, p[1] - y);
        // Prefer the selected view where handles overlap (frame 0 is shared by all views).
        const score = d - (v === this.selected.view ? 0.5 : 0);
        if (d <= HANDLE_RADIUS + 2 && (!best || score < best.score)) best = { view: v, key: k, handle, score };
      }
    }));
    return best;
  }

  // ---------------------------------------------------------------------------------- mouse

  listen(target, type, handler, options) {
    target.addEventListener(type, handler, options);
    this.listeners.push([target, type, handler, options]);
  }

  attachMouse() {
    let drag = null;
    // Page pixels -> the canvas's CSS pixels (a zoomed graph may scale the node with a CSS transform).
    const ratio = () => this.canvas.clientWidth / (this.canvas.getBoundingClientRect().width || 1);
    const local = (event) => {
      const rect = this.canvas.getBoundingClientRect();
      return [(event.clientX - rect.left) * ratio(), (event.clientY - rect.top) * ratio()];
    };
    this.listen(this.canvas, "pointerdown", (event) => {
      const [x, y] = local(event);
      const hit = this.hit(x, y);
      if (hit) {
        this.selected = { view: hit.view, key: hit.key };
        this.updateBar();
        const start = this.doc.views[hit.view].keyframes[hit.key][hit.handle].slice();
        drag = { kind: "handle", x: event.clientX, y: event.clientY, hit, start, base: this.doc };
      } else {
        drag = { kind: "orbit", x: event.clientX, y: event.clientY, yaw: this.yaw, pitch: this.pitch };
      }
      this.canvas.setPointerCapture?.(event.pointerId);
      this.canvas.focus?.({ preventScroll: true });
      event.stopPropagation();
      event.preventDefault();
      this.draw();
    });
    this.listen(this.canvas, "pointermove", (event) => {
      if (!drag) return;
      event.stopPropagation();
      const dx = (event.clientX - drag.x) * ratio(), dy = (event.clientY - drag.y) * ratio();
      if (drag.kind === "handle") {
        const delta = this.unprojectDelta(drag.start, dx, dy);
        const point = drag.start.map((c, a) => c + delta[a]);
        this.doc = KF.moveHandle(drag.base, drag.hit.view, drag.hit.key, drag.hit.handle, point);
        drag.moved = true;
      } else if (this.mode === "orbit") {
        this.yaw = drag.yaw + dx * 0.01;
        this.pitch = Math.max(-1.5, Math.min(1.5, drag.pitch + dy * 0.01));
      }
      this.draw();
    });
    const end = (event) => {
      event.stopPropagation();
      const finished = drag;
      drag = null;
      if (finished?.kind !== "handle" || !finished.moved) return;
      let doc = this.doc;
      try {
        KF.expandView(doc.views[finished.hit.view], 2); // a degenerate look-at is refused here, not saved
      } catch (error) {
        doc = finished.base;
        this.doc = doc;
        this.setMessage(String(error.message ?? error));
        return;
      }
      this.message = "";
      this.updateBar();
      this.options.onChange(doc);
    };
    this.listen(this.canvas, "pointerup", end);
    this.listen(this.canvas, "pointercancel", end);
    listenWheelZoom(this);
  }

  // ---------------------------------------------------------------------------------- drawing

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = this.cssSize();
    const w = Math.round(width * ratio), h = Math.round(height * ratio);
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
      if (this.doc) this.fit();
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0); // draw in CSS pixels
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, width, height);
    this.drawCount += 1;
    if (!this.doc) {
      ctx.fillStyle = "#777";
      ctx.font = "12px sans-serif";
      ctx.fillText(this.message || "loading the rig…", 8, 20);
      return;
    }
    let paths;
    try {
      paths = this.worldPaths();
    } catch (error) {
      ctx.fillStyle = "#b00";
      ctx.font = "12px sans-serif";
      ctx.fillText(String(error.message ?? error), 8, 20);
      return;
    }
    this.drawAxes(ctx);
    paths.forEach((poses, v) => this.drawPath(ctx, poses, viewColor(v)));
    if (this.editing) this.doc.views.forEach((view, v) => this.drawHandles(ctx, view, v));
    this.drawLegend(ctx, width, height);
  }

  line(ctx, a, b) {
    const p = this.project(a), q = this.project(b);
    if (!p || !q) return;
    ctx.beginPath();
    ctx.moveTo(p[0], p[1]);
    ctx.lineTo(q[0], q[1]);
    ctx.stroke();
  }

  drawAxes(ctx) {
    const length = 0.3 * this.radius;
    [[[length, 0, 0], "#d62728"], [[0, length, 0], "#2ca02c"], [[0, 0, length], "#1f77b4"]].forEach(([tip, color]) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 1;
      this.line(ctx, [0, 0, 0], tip);
    });
  }

  drawPath(ctx, poses, color) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    for (const m of poses) {
      const q = this.project([m[0][3], m[1][3], m[2][3]]);
      if (!q) { started = false; continue; }
      if (started) ctx.lineTo(q[0], q[1]);
      else ctx.moveTo(q[0], q[1]);
      started = true;
    }
    ctx.stroke();
  }

  drawHandles(ctx, view, v) {
    const color = viewColor(v);
    view.keyframes.forEach((key, k) => {
      const selected = this.selected.view === v && this.selected.key === k;
      ctx.strokeStyle = color;
      ctx.setLineDash([3, 3]);
      ctx.lineWidth = 1;
      this.line(ctx, key.position, key.target);
      ctx.setLineDash([]);
      const p = this.project(key.position), t = this.project(key.target);
      ctx.fillStyle = color;
      if (p) {
        ctx.beginPath();
        ctx.arc(p[0], p[1], selected ? HANDLE_RADIUS + 1 : HANDLE_RADIUS - 1, 0, 2 * Math.PI);
        ctx.fill();
        if (selected) { ctx.strokeStyle = "#222"; ctx.lineWidth = 1.5; ctx.stroke(); }
      }
      if (t) {
        ctx.strokeStyle = color;
        ctx.lineWidth = selected ? 2.5 : 1.5;
        ctx.strokeRect(t[0] - 4, t[1] - 4, 8, 8);
      }
    });
  }

  drawLegend(ctx, width, height) {
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "top";
    this.doc.views.forEach((view, v) => {
      const y = 6 + 14 * v;
      ctx.fillStyle = viewColor(v);
      ctx.fillRect(6, y + 2, 10, 8);
      ctx.fillStyle = "#282828";
      const mark = this.editing && v === this.selected.view ? " ◀" : "";
      ctx.fillText(`view ${v}: ${view.label ?? ""}${mark}`, 20, y);
    });
    ctx.fillStyle = "#777";
    ctx.textBaseline = "bottom";
    const key = this.doc.views[this.selected.view]?.keyframes[this.selected.key];
    const hint = this.editing ? `${this.mode} · drag a dot (camera) or square (look-at)` +
      (key ? ` · selected: view ${this.selected.view} key ${this.selected.key} (t ${Number(key.t).toFixed(2)})` : "")
      : `${this.mode} · ${this.options.frames()} frames`;
    ctx.fillText(hint, 6, height - 4);
  }

  dispose() {
    this.resizeObserver?.disconnect();
    for (const [target, type, handler, options] of this.listeners) target.removeEventListener(type, handler, options);
    this.listeners = [];
  }
}
