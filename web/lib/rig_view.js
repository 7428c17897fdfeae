// Interactive 3-D view of a camera rig on a 2-D canvas: camera paths and frusta, orbit with the mouse.
//
// Input is CameraSet.to_dict() ("cvd_cameras/1"): K [V][F][3][3] and c2w [V][F][4][4] (OpenCV
// camera-to-world: x right, y down, z forward), or a single trajectory K [F][3][3], c2w [F][4][4].
// A perspective projection written out by hand is enough for a few hundred line segments, so no
// 3-D library is bundled.

const PALETTE = [[0.00, 0.45, 0.70], [0.90, 0.38, 0.00], [0.00, 0.62, 0.45], [0.80, 0.47, 0.65],
  [0.94, 0.76, 0.05], [0.34, 0.71, 0.91], [0.55, 0.25, 0.10], [0.20, 0.20, 0.20]];
const BACKGROUND = "#f8f8f6";
const DEFAULT_YAW = -0.7;
const DEFAULT_PITCH = 0.45;

function hsvToRgb(h, s, v) {
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s), q = v * (1 - f * s), t = v * (1 - (1 - f) * s);
  return [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
}

/** CSS colour of view `i`; the same colours as the Python preview (cvd_core.viz.view_colors). */
export function viewColor(i) {
  const rgb = i < PALETTE.length ? PALETTE[i] : hsvToRgb(((i - PALETTE.length) * 0.618034) % 1.0, 0.75, 0.85);
  return `rgb(${rgb.map((c) => Math.round(255 * c)).join(",")})`;
}

const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const norm = (a) => Math.hypot(a[0], a[1], a[2]);

/** Nesting depth of the c2w array: 4 for a rig [V][F][4][4], 3 for one trajectory [F][4][4]. */
function depthOf(value) {
  let depth = 0;
  while (Array.isArray(value)) { depth += 1; value = value[0]; }
  return depth;
}

/**
 * Paths and frusta of every view in world coordinates.
 * @returns {{views: {label: string, centers: number[][], frusta: number[][][]}[], center: number[], radius: number}}
 */
export function rigGeometry(cameras) {
  if (!cameras || !Array.isArray(cameras.c2w) || !Array.isArray(cameras.K)) {
    throw new Error("camera data must have K and c2w arrays (CameraSet.to_dict())");
  }
  const isRig = depthOf(cameras.c2w) === 4;
  const c2wViews = isRig ? cameras.c2w : [cameras.c2w];
  const kViews = isRig ? cameras.K : [cameras.K];
  const width = Number(cameras.width) || 1, height = Number(cameras.height) || 1;
  const labels = cameras.labels || [];
  const views = c2wViews.map((frames, v) => ({
    label: String(labels[v] ?? `view ${v}`),
    centers: frames.map((m) => [m[0][3], m[1][3], m[2][3]]),
    rotations: frames.map((m) => [0, 1, 2].map((r) => [m[r][0], m[r][1], m[r][2]])),
    K: kViews[v] || kViews[0],
  }));
  const all = views.flatMap((view) => view.centers);
  const lo = [0, 1, 2].map((a) => Math.min(...all.map((p) => p[a])));
  const hi = [0, 1, 2].map((a) => Math.max(...all.map((p) => p[a])));
  const span = norm(sub(hi, lo));
  // A static rig has no extent: size the frusta from unity so they stay visible.
  const frustumDepth = span > 1e-6 ? 0.18 * span : 0.5;
  for (const view of views) {
    const last = view.centers.length - 1;
    const picks = [...new Set([0, Math.round(last / 2), last])];
    view.frusta = picks.map((f) => frustum(view.K[f] || view.K[0], view.rotations[f], view.centers[f],
      width, height, frustumDepth));
  }
  const frustumPoints = views.flatMap((view) => view.frusta.flat());
  const points = all.concat(frustumPoints);
  const center = [0, 1, 2].map((a) => {
    const values = points.map((p) => p[a]);
    return (Math.min(...values) + Math.max(...values)) / 2;
  });
  const radius = Math.max(1e-3, ...points.map((p) => norm(sub(p, center))));
  return { views, center, radius };
}

/** Camera centre then the four image corners at `depth` along the optical axis, in world coordinates. */
function frustum(K, R, t, width, height, depth) {
  const corners = [[0, 0], [width, 0], [width, height], [0, height]];
  const world = corners.map(([u, v]) => {
    const local = [(u - K[0][2]) / K[0][0] * depth, (v - K[1][2]) / K[1][1] * depth, depth];
    return [0, 1, 2].map((r) => dot(R[r], local) + t[r]);
  });
  return [t, ...world];
}

/**
 * An orbiting viewer around `center`: yaw about the world's vertical (y, pointing down in OpenCV),
 * pitch > 0 looks down from above. Returns project(p) -> [x, y, depth] | null in canvas pixels.
 */
export function orbitProjector({ center, radius, yaw, pitch, zoom, width, height }) {
  const forward = [Math.cos(pitch) * Math.sin(yaw), Math.sin(pitch), Math.cos(pitch) * Math.cos(yaw)];
  const distance = (2.1 * radius) / zoom;
  const eye = sub(center, forward.map((c) => c * distance));
  let right = cross([0, 1, 0], forward);
  const length = norm(right) || 1;
  right = right.map((c) => c / length);
  const down = cross(forward, right);
  const focal = 0.9 * Math.min(width, height);
  return (p) => {
    const q = sub(p, eye);
    const z = dot(q, forward);
    if (z <= 1e-6) return null;
    return [width / 2 + (focal * dot(q, right)) / z, height / 2 + (focal * dot(q, down)) / z, z];
  };
}

/** A canvas that draws a rig and orbits/zooms with the mouse. */
/** The mouse wheel zooms `view` (its `zoom`, then `draw()`), not the graph behind it; `view.listen` keeps
 * the listener so that the view removes it when it closes. */
export function listenWheelZoom(view) {
  view.listen(view.canvas, "wheel", (event) => {
    view.zoom = Math.max(0.2, Math.min(8, view.zoom * Math.exp(-event.deltaY * 0.001)));
    view.draw();
    event.preventDefault();
    event.stopPropagation();
  }, { passive: false });
}

export class RigView {
  constructor(canvas, cameras) {
    this.canvas = canvas;
    this.geometry = rigGeometry(cameras);
    this.reset();
    this.drawCount = 0;
    this.listeners = [];
    this.attachMouse();
    this.resizeObserver = typeof ResizeObserver === "function" ? new ResizeObserver(() => this.draw()) : null;
    this.resizeObserver?.observe(canvas);
    this.draw();
  }

  reset() {
    this.yaw = DEFAULT_YAW;
    this.pitch = DEFAULT_PITCH;
    this.zoom = 1;
  }

  listen(target, type, handler, options) {
    target.addEventListener(type, handler, options);
    this.listeners.push([target, type, handler, options]);
  }

  attachMouse() {
    let drag = null;
    this.listen(this.canvas, "pointerdown", (event) => {
      drag = { x: event.clientX, y: event.clientY, yaw: this.yaw, pitch: this.pitch };
      this.canvas.setPointerCapture?.(event.pointerId);
      // preventDefault below also prevents the focus a click gives; take it explicitly, so that a
      // frontend that leaves the wheel only to a focused widget (Vue nodes) lets it zoom the rig.
      this.canvas.focus?.({ preventScroll: true });
      event.stopPropagation();
      event.preventDefault();
    });
    this.listen(this.canvas, "pointermove", (event) => {
      if (!drag) return;
      this.yaw = drag.yaw + (event.clientX - drag.x) * 0.01;
      this.pitch = Math.max(-1.5, Math.min(1.5, drag.pitch + (event.clientY - drag.y) * 0.01));
      this.draw();
      event.stopPropagation();
    });
    const end = (event) => { drag = null; event.stopPropagation(); };
    this.listen(this.canvas, "pointerup", end);
    this.listen(this.canvas, "pointercancel", end);
    listenWheelZoom(this);
    this.listen(this.canvas, "dblclick", (event) => { this.reset(); this.draw(); event.stopPropagation(); });
  }

  /** Size the backing store to the element (device pixels) and draw the scene. */
  draw() {
    const canvas = this.canvas;
    const scale = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * scale));
    const height = Math.max(1, Math.round(canvas.clientHeight * scale));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, width, height);
    const { center, radius, views } = this.geometry;
    const project = orbitProjector({
      center, radius, yaw: this.yaw, pitch: this.pitch, zoom: this.zoom, width, height,
    });
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    this.drawAxes(ctx, project, radius, scale);
    views.forEach((view, v) => this.drawView(ctx, project, view, viewColor(v), scale));
    this.drawLegend(ctx, views, scale);
    this.drawCount += 1;
  }

  drawAxes(ctx, project, radius, scale) {
    // World axes at the origin (the shared first pose of CVD rigs): x red, y (down) green, z (forward) blue.
    const origin = [0, 0, 0];
    const length = 0.35 * radius;
    [[[length, 0, 0], "#d62728"], [[0, length, 0], "#2ca02c"], [[0, 0, length], "#1f77b4"]].forEach(([tip, color]) => {
      this.line(ctx, project, origin, tip, color, 1.5 * scale);
    });
  }

  drawView(ctx, project, view, color, scale) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2 * scale;
    ctx.beginPath();
    let started = false;
    for (const p of view.centers) {
      const q = project(p);
      if (!q) { started = false; continue; }
      if (started) ctx.lineTo(q[0], q[1]);
      else ctx.moveTo(q[0], q[1]);
      started = true;
    }
    ctx.stroke();
    view.frusta.forEach((points, index) => {
      const width = (index === view.frusta.length - 1 ? 1.6 : 0.9) * scale;
      const [apex, ...corners] = points;
      corners.forEach((corner, i) => {
        this.line(ctx, project, apex, corner, color, width);
        this.line(ctx, project, corner, corners[(i + 1) % 4], color, width);
      });
    });
    const end = project(view.centers[view.centers.length - 1]);
    if (end) {
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(end[0], end[1], 3.5 * scale, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  drawLegend(ctx, views, scale) {
    ctx.font = `${Math.round(11 * scale)}px sans-serif`;
    ctx.textBaseline = "top";
    views.forEach((view, v) => {
      const y = (6 + 15 * v) * scale;
      ctx.fillStyle = viewColor(v);
      ctx.fillRect(6 * scale, y + 2 * scale, 10 * scale, 8 * scale);
      ctx.fillStyle = "#282828";
      ctx.fillText(`view ${v}: ${view.label}`, 20 * scale, y);
    });
    ctx.fillStyle = "#777";
    ctx.textBaseline = "bottom";
    ctx.fillText("drag: orbit · wheel: zoom · double-click: reset", 6 * scale, this.canvas.height - 4 * scale);
  }

  line(ctx, project, a, b, color, width) {
    const p = project(a), q = project(b);
    if (!p || !q) return;
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.moveTo(p[0], p[1]);
    ctx.lineTo(q[0], q[1]);
    ctx.stroke();
  }

  dispose() {
    this.resizeObserver?.disconnect();
    for (const [target, type, handler, options] of this.listeners) target.removeEventListener(type, handler, options);
    this.listeners = [];
  }
}
