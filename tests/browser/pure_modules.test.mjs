// Unit tests of the extension's DOM-free modules with Node's own test runner (no browser):
//   node --test pure_modules.test.mjs
// Run by tests/integration/test_browser.py::test_pure_modules_under_node.

import assert from "node:assert/strict";
import { test } from "node:test";

import { loopDrift, SharedClock, slaveVideos } from "../../web/lib/shared_clock.js";
import { orbitProjector, rigGeometry, viewColor } from "../../web/lib/rig_view.js";
import { gridColumns, patternFrameName, preferredHeight } from "../../web/lib/player_grid.js";

function fakeTime() {
  let ms = 0;
  return { now: () => ms, advance: (s) => { ms += s * 1000; } };
}

test("loopDrift folds differences across the loop point", () => {
  assert.ok(Math.abs(loopDrift(0.05, 1.95, 2) - 0.1) < 1e-9);
  assert.ok(Math.abs(loopDrift(1.95, 0.05, 2) + 0.1) < 1e-9);
  assert.equal(loopDrift(0.5, 0.5, 2), 0);
});

test("the clock plays, loops, pauses and seeks to frame centres", () => {
  const t = fakeTime();
  const clock = new SharedClock({ fps: 8, frames: 16, now: t.now });
  assert.equal(clock.duration, 2);
  assert.equal(clock.frame(), 0);
  clock.play();
  t.advance(0.5);
  assert.equal(clock.frame(), 4);
  t.advance(2.0); // a whole loop later: same frame
  assert.equal(clock.frame(), 4);
  clock.pause();
  t.advance(1.0);
  assert.equal(clock.frame(), 4, "a paused clock does not move");
  clock.seekFrame(5);
  assert.equal(clock.time(), 5.5 / 8);
  clock.seekFrame(99);
  assert.equal(clock.frame(), 15, "seeks are clamped to the last frame");
  assert.equal(clock.tolerance(), 0.5 / 8);
});

test("slaveVideos seeks only players that drifted more than half a frame", () => {
  const t = fakeTime();
  const clock = new SharedClock({ fps: 10, frames: 20, now: t.now });
  clock.seekFrame(10); // 1.05 s
  const near = { readyState: 4, paused: true, seeking: false, currentTime: 1.07, duration: 2 };
  const far = { readyState: 4, paused: true, seeking: false, currentTime: 0.2, duration: 2 };
  const busy = { readyState: 4, paused: true, seeking: true, currentTime: 0.2, duration: 2 };
  assert.equal(slaveVideos(clock, [near, far, busy]), 1);
  assert.equal(near.currentTime, 1.07);
  assert.equal(far.currentTime, 1.05);
  assert.equal(busy.currentTime, 0.2, "a seeking player is left alone until its seek completes");
});

test("slaveVideos starts and stops players with the clock", () => {
  const t = fakeTime();
  const clock = new SharedClock({ fps: 8, frames: 16, now: t.now });
  let plays = 0, pauses = 0;
  const video = {
    readyState: 4, paused: true, seeking: false, currentTime: 0.0625, duration: 2,
    play() { plays += 1; this.paused = false; return Promise.resolve(); },
    pause() { pauses += 1; this.paused = true; },
  };
  clock.play();
  slaveVideos(clock, [video]);
  assert.equal(plays, 1);
  clock.pause();
  slaveVideos(clock, [video]);
  assert.equal(pauses, 1);
});

test("rigGeometry reads CameraSet.to_dict() rigs and single trajectories", () => {
  const eye = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]];
  const moved = [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]];
  const K = [[100, 0, 64], [0, 100, 64], [0, 0, 1]];
  const rig = { format: "cvd_cameras/1", width: 128, height: 128, labels: ["a", "b"],
    K: [[K, K], [K, K]], c2w: [[eye, moved], [eye, eye]] };
  const geometry = rigGeometry(rig);
  assert.equal(geometry.views.length, 2);
  assert.deepEqual(geometry.views[0].centers[1], [1, 0, 2]);
  assert.equal(geometry.views[1].label, "b");
  // Frustum corners lie in front of the camera (z > centre z for an identity rotation).
  for (const corner of geometry.views[0].frusta[0].slice(1)) assert.ok(corner[2] > 0);
  const single = rigGeometry({ width: 128, height: 128, labels: ["x"], K: [K, K], c2w: [eye, moved] });
  assert.equal(single.views.length, 1);
  assert.throws(() => rigGeometry({ width: 1 }), /K and c2w/);
});

test("the orbit projector puts the centre in the middle and hides points behind the eye", () => {
  const project = orbitProjector({ center: [0, 0, 0], radius: 1, yaw: 0, pitch: 0, zoom: 1, width: 200, height: 100 });
  const [x, y] = project([0, 0, 0]);
  assert.ok(Math.abs(x - 100) < 1e-9 && Math.abs(y - 50) < 1e-9);
  assert.ok(project([0.5, 0, 0])[0] > 100, "+x is to the right");
  assert.ok(project([0, 0.5, 0])[1] > 50, "+y (OpenCV down) is down");
  assert.equal(project([0, 0, -10]), null);
});

test("view colours match cvd_core.viz.view_colors and layout helpers are sane", () => {
  assert.equal(viewColor(1), "rgb(230,97,0)");
  assert.match(viewColor(12), /^rgb\(\d+,\d+,\d+\)$/);
  assert.deepEqual([1, 2, 3, 4, 5, 9].map(gridColumns), [1, 2, 2, 2, 3, 3]);
  assert.equal(patternFrameName("frame_%05d.png", 7), "frame_00007.png");
  const entry = { views: [{}, {}, {}, {}], width: 128, height: 64 };
  assert.ok(preferredHeight(entry, 420) < preferredHeight(entry, 840), "wider nodes get taller players");
});

// ------------------------------------------------------------------------------------ keyframes

import { addKeyframe, addView, camerasFromKeyframes, deleteKeyframe, deleteView, duplicateView, expandView,
  keyframeRotation, moveHandle, quaternion, setKeyframeValues, setSharedFirstFrame } from "../../web/lib/keyframes.js";

const START = { t: 0, position: [0, 0, 0], target: [0, 0, 1] };
const DOC = { format: "cvd_keyframes/1", shared_first_frame: true, views: [
  { label: "a", keyframes: [START, { t: 0.5, position: [0.2, 0.1, 0.3], target: [0, 0, 1.2], roll_deg: 15 },
    { t: 1, position: [0.5, 0, 0.2], target: [0, 0, 1] }] },
  { label: "b", keyframes: [{ ...START }, { t: 1, position: [-0.4, 0, 0.1], target: [0, 0.1, 1] }] }] };

const maxDiff = (a, b) => Math.max(...a.flat(3).map((x, i) => Math.abs(x - b.flat(3)[i])));

test("keyframes are hit exactly and frame 0 is the identity", () => {
  const { c2w } = expandView(DOC.views[0], 5); // t = 0, 0.25, 0.5, 0.75, 1
  assert.deepEqual(c2w[0], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]);
  const key = DOC.views[0].keyframes[1];
  assert.ok(Math.abs(c2w[2][0][3] - 0.2) < 1e-12 && Math.abs(c2w[2][2][3] - 0.3) < 1e-12);
  const R = keyframeRotation(key);
  assert.ok(maxDiff(c2w[2].slice(0, 3).map((row) => row.slice(0, 3)), R) < 1e-12);
  assert.deepEqual(c2w[4].map((row) => row[3]).slice(0, 3), [0.5, 0, 0.2]);
});

test("slerp keeps rotations orthonormal and quaternions unit", () => {
  const { c2w } = expandView(DOC.views[0], 33);
  for (const m of c2w) {
    const R = m.slice(0, 3).map((row) => row.slice(0, 3));
    for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) {
      const d = R[0][i] * R[0][j] + R[1][i] * R[1][j] + R[2][i] * R[2][j];
      assert.ok(Math.abs(d - (i === j ? 1 : 0)) < 1e-12);
    }
    const q = quaternion(R);
    assert.ok(Math.abs(Math.hypot(...q) - 1) < 1e-12);
  }
});

test("cameras come out relative to the shared start, in the CameraSet.to_dict() layout", () => {
  const cams = camerasFromKeyframes(DOC, 4, 128, 64);
  assert.equal(cams.format, "cvd_cameras/1");
  assert.deepEqual(cams.labels, ["a", "b"]);
  assert.equal(cams.c2w.length, 2);
  assert.equal(cams.c2w[1].length, 4);
  assert.ok(Math.abs(cams.K[0][0][0][0] - 223.578 / 2) < 1e-12, "CVD's K scaled to 128 px");
});

test("editing keeps the frame-0 rule and the clip ends", () => {
  const moved = moveHandle(DOC, 1, 0, "position", [0.1, 0, 0]);
  assert.deepEqual(moved.views.map((v) => v.keyframes[0].position), [[0.1, 0, 0], [0.1, 0, 0]], "frame 0 moves for all");
  const unlocked = moveHandle(setSharedFirstFrame(DOC, false), 1, 0, "position", [0.1, 0, 0]);
  assert.deepEqual(unlocked.views.map((v) => v.keyframes[0].position), [[0, 0, 0], [0.1, 0, 0]]);
  assert.deepEqual(setSharedFirstFrame(unlocked, true).views[1].keyframes[0].position, [0, 0, 0]);
  const more = addKeyframe(DOC, 1);
  assert.deepEqual(more.views[1].keyframes.map((k) => k.t), [0, 0.5, 1]);
  const middle = expandView(DOC.views[1], 3).c2w[1];
  assert.ok(Math.abs(more.views[1].keyframes[1].position[0] - middle[0][3]) < 1e-12, "added on the path");
  assert.deepEqual(deleteKeyframe(more, 1, 1).views[1].keyframes.map((k) => k.t), [0, 1]);
  assert.throws(() => deleteKeyframe(DOC, 0, 0), /first and last/);
  assert.equal(duplicateView(DOC, 0).views[1].label, "a copy");
  assert.equal(addView(DOC).views.length, 3);
  assert.equal(deleteView(DOC, 0).views[0].label, "b");
  assert.throws(() => deleteView(deleteView(DOC, 0), 0), /at least one view/);
  assert.equal(DOC.views.length, 2, "edits return copies");
});

test("roll and fov edits follow the schema's rules", () => {
  const rolled = setKeyframeValues(DOC, 1, 0, { roll_deg: 10 });
  assert.deepEqual(rolled.views.map((v) => v.keyframes[0].roll_deg), [10, 10], "frame 0's roll is shared");
  const fov = setKeyframeValues(DOC, 0, 1, { fov_deg: 50 });
  assert.deepEqual(fov.views[0].keyframes.map((k) => k.fov_deg), [50, 50, 50], "a view's fov is keyed on all or none");
  assert.deepEqual(setKeyframeValues(fov, 0, 2, { fov_deg: 70 }).views[0].keyframes.map((k) => k.fov_deg), [50, 50, 70]);
  assert.ok(setKeyframeValues(fov, 0, 2, { fov_deg: null }).views[0].keyframes.every((k) => k.fov_deg === undefined));
  assert.throws(() => setKeyframeValues(DOC, 0, 1, { fov_deg: 180 }), /fov must be in \(0, 180\)/);
});
