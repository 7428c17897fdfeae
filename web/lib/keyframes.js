// Keyframed camera rigs ("cvd_keyframes/1"), the JavaScript twin of cvd_core/camera/keyframes.py: the
// camera path editor draws with this, the server expands the same document with the Python, and the
// browser test checks that both give the same poses. DOM-free (tested under `node --test` too).
//
// A keyframe: {t in [0, 1], position [x, y, z], target [x, y, z], roll_deg?, fov_deg?} in world
// coordinates (OpenCV axes: x right, y down, z forward). Between keyframes i and i + 1, with
// h = t[i+1] - t[i] and u = (t - t[i]) / h: positions follow a cubic Hermite curve whose tangents are
// Catmull-Rom differences in time, m[i] = (p[i+1] - p[i-1]) / (t[i+1] - t[i-1]) (one-sided at the
// ends); orientations a shortest-arc quaternion slerp at u; fov_deg is linear in u. See
// docs/camera_editor.md.

export const KEYFRAMES_FORMAT = "cvd_keyframes/1";
const DOWN = [0, 1, 0];
const CVD_FOCAL_256 = 223.578; // cvd_core.camera.presets: CVD's K at 256 px

const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const dot4 = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];

/** Whether parsed custom_json is meant as keyframes (as cvd_core.camera.keyframes.is_keyframes_form). */
export function isKeyframesForm(data) {
  if (!data || typeof data !== "object" || Array.isArray(data)) return false;
  return "format" in data || (Array.isArray(data.views) && data.views.some((v) => v && typeof v === "object" && "keyframes" in v));
}

/** Camera-to-world rotation (rows of a 3x3) of a keyframe: look-at with y down, then roll. */
export function keyframeRotation(key) {
  let z = sub(key.target, key.position);
  const length = Math.sqrt(dot(z, z));
  if (length < 1e-9) throw new Error("target must differ from position (the camera looks at itself)");
  z = scale(z, 1 / length);
  let x = cross(DOWN, z);
  const xLength = Math.sqrt(dot(x, x));
  if (xLength < 1e-6) throw new Error("the camera looks straight up or down (along the y axis); move the target sideways");
  x = scale(x, 1 / xLength);
  const y = cross(z, x);
  const roll = ((key.roll_deg ?? 0) * Math.PI) / 180;
  const c = Math.cos(roll), s = Math.sin(roll);
  const xr = add(scale(x, c), scale(y, s));
  const yr = add(scale(x, -s), scale(y, c));
  return [0, 1, 2].map((r) => [xr[r], yr[r], z[r]]);
}

/** Unit quaternion [w, x, y, z] of a rotation (Shepperd's method, the same branches as the Python). */
export function quaternion(m) {
  const trace = m[0][0] + m[1][1] + m[2][2];
  let q;
  if (trace > 0) {
    const s = Math.sqrt(trace + 1.0) * 2.0;
    q = [0.25 * s, (m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s];
  } else if (m[0][0] > m[1][1] && m[0][0] > m[2][2]) {
    const s = Math.sqrt(1.0 + m[0][0] - m[1][1] - m[2][2]) * 2.0;
    q = [(m[2][1] - m[1][2]) / s, 0.25 * s, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s];
  } else if (m[1][1] > m[2][2]) {
    const s = Math.sqrt(1.0 + m[1][1] - m[0][0] - m[2][2]) * 2.0;
    q = [(m[0][2] - m[2][0]) / s, (m[0][1] + m[1][0]) / s, 0.25 * s, (m[1][2] + m[2][1]) / s];
  } else {
    const s = Math.sqrt(1.0 + m[2][2] - m[0][0] - m[1][1]) * 2.0;
    q = [(m[1][0] - m[0][1]) / s, (m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, 0.25 * s];
  }
  const n = Math.sqrt(dot4(q, q));
  return q.map((c) => c / n);
}

/** Shortest-arc slerp of unit quaternions (angle from atan2, well conditioned near 0). */
export function slerp(q0, q1In, u) {
  const q1 = dot4(q0, q1In) < 0 ? q1In.map((c) => -c) : q1In;
  const d = q1.map((c, i) => c - q0[i]), s = q1.map((c, i) => c + q0[i]);
  const angle = 2.0 * Math.atan2(Math.sqrt(dot4(d, d)), Math.sqrt(dot4(s, s)));
  let q;
  if (angle < 1e-9) q = q0.map((c, i) => c + u * (q1[i] - c));
  else {
    const a = Math.sin((1.0 - u) * angle), b = Math.sin(u * angle), sine = Math.sin(angle);
    q = q0.map((c, i) => (a * c + b * q1[i]) / sine);
  }
  const n = Math.sqrt(dot4(q, q));
  return q.map((c) => c / n);
}

function matrixOf([w, x, y, z]) {
  return [
    [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]];
}

function tangents(times, points) {
  const n = times.length;
  return points.map((_, i) => {
    const a = Math.max(i - 1, 0), b = Math.min(i + 1, n - 1);
    return scale(sub(points[b], points[a]), 1 / (times[b] - times[a]));
  });
}

function segment(times, s) {
  let i = 0;
  while (i < times.length - 2 && s >= times[i + 1]) i += 1;
  return i;
}

function prepare(view) {
  const keys = view.keyframes;
  const times = keys.map((k) => Number(k.t));
  const points = keys.map((k) => k.position.map(Number));
  return { keys, times, points, m: tangents(times, points), quats: keys.map((k) => quaternion(keyframeRotation(k))) };
}

/** Pose [4][4] and fov (null: not keyed) of a prepared view at clip time s in [0, 1]. */
function poseAt({ keys, times, points, m, quats }, s) {
  const i = segment(times, s);
  const h = times[i + 1] - times[i];
  const u = (s - times[i]) / h;
  const u2 = u * u, u3 = u * u * u;
  const c = [2 * u3 - 3 * u2 + 1, (u3 - 2 * u2 + u) * h, -2 * u3 + 3 * u2, (u3 - u2) * h];
  const p = [0, 1, 2].map((a) => c[0] * points[i][a] + c[1] * m[i][a] + c[2] * points[i + 1][a] + c[3] * m[i + 1][a]);
  const R = matrixOf(slerp(quats[i], quats[i + 1], u));
  const fov = keys[0].fov_deg != null ? keys[i].fov_deg + u * (keys[i + 1].fov_deg - keys[i].fov_deg) : null;
  return { pose: [[...R[0], p[0]], [...R[1], p[1]], [...R[2], p[2]], [0, 0, 0, 1]], fov };
}

/** World c2w [F][4][4] and per-frame fov (null: CVD's K) of one view. */
export function expandView(view, frames, sharedFov = null) {
  const prepared = prepare(view);
  const c2w = [], fovs = [];
  for (let f = 0; f < frames; f++) {
    const { pose, fov } = poseAt(prepared, frames > 1 ? f / (frames - 1) : 0.0);
    c2w.push(pose);
    fovs.push(fov ?? view.fov_deg ?? sharedFov ?? null);
  }
  return { c2w, fovs };
}

/** inv(A) @ B for rigid 4x4 matrices (the inverse rotation is the transpose). */
function relativeTo(A, B) {
  const out = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]];
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 4; c++) {
      let v = 0;
      for (let k = 0; k < 3; k++) v += A[k][r] * (B[k][c] - (c === 3 ? A[k][3] : 0));
      out[r][c] = v;
    }
  }
  return out;
}

const IDENTITY = () => [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]];

/**
 * The rig of a document as CameraSet.to_dict() gives it ("cvd_cameras/1"): c2w [V][F][4][4] relative
 * to the shared first pose (frame 0 the exact identity) or, unlocked, to view 0's first pose; K from
 * fov_deg (square pixels) or CVD's K. `relative: false`: world poses (what the editor draws).
 */
export function camerasFromKeyframes(doc, frames, width, height, { relative = true } = {}) {
  const expanded = doc.views.map((view) => expandView(view, frames, doc.fov_deg ?? null));
  let c2w = expanded.map((e) => e.c2w);
  if (relative) {
    const shared = doc.shared_first_frame !== false;
    c2w = c2w.map((poses) => {
      const reference = shared ? poses[0] : c2w[0][0];
      return poses.map((pose, f) => (f === 0 && (shared || poses === c2w[0]) ? IDENTITY() : relativeTo(reference, pose)));
    });
  }
  const K = expanded.map((e) => e.fovs.map((fov) => intrinsics(fov, width, height)));
  return { format: "cvd_cameras/1", width, height, labels: doc.views.map((v, i) => String(v.label ?? `view ${i}`)), K, c2w };
}

function intrinsics(fov, width, height) {
  if (fov == null) {
    return [[CVD_FOCAL_256 * width / 256, 0, 128 * width / 256], [0, CVD_FOCAL_256 * height / 256, 128 * height / 256], [0, 0, 1]];
  }
  const focal = width / 2 / Math.tan((fov * Math.PI) / 360);
  return [[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]];
}

// ------------------------------------------------------------------------------------ editing

const clone = (value) => JSON.parse(JSON.stringify(value));

/** Copy of `doc` with view v's keyframe k's `handle` ("position" or "target") at `point`; a move of a
 * first keyframe moves every view's first keyframe while frame 0 is shared (CVD's convention). */
export function moveHandle(doc, v, k, handle, point) {
  const next = clone(doc);
  const targets = k === 0 && next.shared_first_frame !== false ? next.views.map((_, i) => i) : [v];
  for (const i of targets) next.views[i].keyframes[k === 0 ? 0 : k][handle] = point.map(Number);
  return next;
}

/** Copy with a keyframe added to view v in the middle of its longest segment (on the path there). */
export function addKeyframe(doc, v) {
  const next = clone(doc);
  const keys = next.views[v].keyframes;
  let best = 0;
  keys.forEach((key, i) => { if (i < keys.length - 1 && keys[i + 1].t - key.t > keys[best + 1].t - keys[best].t) best = i; });
  const t = (keys[best].t + keys[best + 1].t) / 2;
  const middle = poseAt(prepare(next.views[v]), t).pose; // on the current path: the shape barely changes
  const position = [middle[0][3], middle[1][3], middle[2][3]];
  const reach = Math.hypot(...sub(keys[best].target, keys[best].position));
  const target = [0, 1, 2].map((a) => position[a] + reach * middle[a][2]);
  const key = { t, position, target };
  if (keys[best].roll_deg != null || keys[best + 1].roll_deg != null) key.roll_deg = ((keys[best].roll_deg ?? 0) + (keys[best + 1].roll_deg ?? 0)) / 2;
  if (keys[best].fov_deg != null) key.fov_deg = (keys[best].fov_deg + keys[best + 1].fov_deg) / 2;
  keys.splice(best + 1, 0, key);
  return next;
}

/** Copy without view v's keyframe k (the first and last stay: they are the clip's ends). */
export function deleteKeyframe(doc, v, k) {
  const keys = doc.views[v].keyframes;
  if (k <= 0 || k >= keys.length - 1) throw new Error("the first and last keyframes mark the clip's ends and stay");
  const next = clone(doc);
  next.views[v].keyframes.splice(k, 1);
  return next;
}

/** Copy with view v duplicated after it (label "<label> copy"), its later keyframes mirrored in x so it shows. */
export function duplicateView(doc, v) {
  const next = clone(doc);
  const copy = clone(next.views[v]);
  copy.label = `${copy.label ?? `view ${v}`} copy`;
  copy.keyframes.forEach((key, k) => {
    if (k === 0) return; // frame 0 stays shared
    key.position[0] = -key.position[0];
    key.target[0] = -key.target[0];
  });
  next.views.splice(v + 1, 0, copy);
  return next;
}

/** Copy with a new view: a straight move from the shared start to a point to the side. */
export function addView(doc) {
  const next = clone(doc);
  const first = clone(next.views[0].keyframes[0]);
  const last = clone(first);
  last.t = 1;
  const side = 0.3 * (next.views.length % 2 ? -1 : 1) * (1 + Math.floor(next.views.length / 2));
  last.position = add(first.position, [side, 0, 0]);
  last.target = add(first.target, [0, 0, 0]);
  next.views.push({ label: `view ${next.views.length}`, keyframes: [first, last] });
  return next;
}

/** Copy without view v (a rig keeps at least one view). */
export function deleteView(doc, v) {
  if (doc.views.length <= 1) throw new Error("a rig needs at least one view");
  const next = clone(doc);
  next.views.splice(v, 1);
  return next;
}

/** Copy with frame 0 shared (every view's first keyframe set to view 0's) or unlocked. */
export function setSharedFirstFrame(doc, shared) {
  const next = clone(doc);
  next.shared_first_frame = !!shared;
  if (shared) next.views.forEach((view) => { view.keyframes[0] = { ...clone(next.views[0].keyframes[0]) }; });
  return next;
}

/**
 * Copy with view v's keyframe k given `roll_deg` and/or `fov_deg` (null removes it). A view's fov is keyed
 * on all its keyframes or on none: the first fov given is copied to the view's other keyframes, and
 * removing one removes all. While frame 0 is shared, a first keyframe's roll (part of the pose) is set
 * in every view.
 */
export function setKeyframeValues(doc, v, k, { roll_deg: roll, fov_deg: fov } = {}) {
  const next = clone(doc);
  if (roll !== undefined) {
    if (roll !== null && !(Number.isFinite(roll) && Math.abs(roll) <= 360)) throw new Error(`roll must be between -360 and 360 degrees, got ${roll}`);
    const views = k === 0 && next.shared_first_frame !== false ? next.views : [next.views[v]];
    for (const view of views) {
      if (roll === null) delete view.keyframes[k].roll_deg;
      else view.keyframes[k].roll_deg = roll;
    }
  }
  if (fov !== undefined) {
    const keys = next.views[v].keyframes;
    if (fov === null) keys.forEach((key) => { delete key.fov_deg; });
    else {
      if (!(Number.isFinite(fov) && fov > 0 && fov < 180)) throw new Error(`fov must be in (0, 180) degrees, got ${fov}`);
      if (keys[0].fov_deg == null) keys.forEach((key) => { key.fov_deg = fov; });
      keys[k].fov_deg = fov;
    }
  }
  return next;
}

/** Stable JSON text of a document (what the editor writes into custom_json). */
export function keyframesText(doc) {
  return JSON.stringify(doc);
}
