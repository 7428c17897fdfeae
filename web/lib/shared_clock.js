// One timeline for several media players.
//
// The clock owns the time; every player is slaved to it. Players play natively (so frames advance
// smoothly) and are only seeked back onto the clock when they drift by more than half a frame, which
// keeps all views within one frame of each other without seeking on every animation frame.
// Pure logic: no ComfyUI imports, no DOM construction (the players are passed in).

/** Remainder in [0, m) for any finite x (JavaScript's % keeps the sign of x). */
function positiveModulo(x, m) {
  return ((x % m) + m) % m;
}

/**
 * Signed difference a - b on a loop of length `duration`, folded into [-duration/2, duration/2],
 * so that a player that has just wrapped to 0.01 s is 0.02 s ahead of a clock at duration - 0.01 s,
 * not a whole loop behind.
 */
export function loopDrift(a, b, duration) {
  let d = positiveModulo(a - b, duration);
  if (d > duration / 2) d -= duration;
  return d;
}

export class SharedClock {
  /**
   * @param {{fps: number, frames: number, now?: () => number}} options  now() in milliseconds
   */
  constructor({ fps, frames, now }) {
    this.fps = Number(fps) > 0 ? Number(fps) : 8;
    this.frames = Math.max(1, Math.floor(Number(frames) || 1));
    this.duration = this.frames / this.fps;
    this.now = now || (() => performance.now());
    this.playing = false;
    this.anchorTime = 0.5 / this.fps; // the centre of frame 0: never ambiguous between two frames
    this.anchorWall = this.now();
  }

  /** Current time in seconds, in [0, duration). */
  time() {
    if (!this.playing) return this.anchorTime;
    return positiveModulo(this.anchorTime + (this.now() - this.anchorWall) / 1000, this.duration);
  }

  /** Index of the frame shown at the current time. */
  frame() {
    return Math.min(this.frames - 1, Math.floor(this.time() * this.fps + 1e-6));
  }

  play() {
    if (this.playing) return;
    this.anchorTime = this.time();
    this.anchorWall = this.now();
    this.playing = true;
  }

  pause() {
    if (!this.playing) return;
    this.anchorTime = this.time();
    this.playing = false;
  }

  toggle() {
    if (this.playing) this.pause();
    else this.play();
  }

  /** Jump to the centre of frame `index` (clamped); playing continues from there. */
  seekFrame(index) {
    const frame = Math.min(this.frames - 1, Math.max(0, Math.round(Number(index) || 0)));
    this.anchorTime = (frame + 0.5) / this.fps;
    this.anchorWall = this.now();
  }

  /** Largest allowed disagreement between a player and the clock before it is seeked back. */
  tolerance() {
    return 0.5 / this.fps;
  }
}

/**
 * Bring every <video> in `videos` onto the clock: same play state, and seeked to the clock's time
 * when it drifted more than half a frame (and is not already seeking). Returns how many were seeked.
 */
export function slaveVideos(clock, videos) {
  const target = clock.time();
  const tolerance = clock.tolerance();
  let seeked = 0;
  for (const video of videos) {
    if (!video || video.readyState < 1) continue; // no metadata yet: currentTime cannot be set
    if (clock.playing && video.paused && !video.cvdPlayPending) {
      video.cvdPlayPending = true;
      const done = () => { video.cvdPlayPending = false; };
      const started = video.play();
      if (started && started.then) started.then(done, done);
      else done();
    } else if (!clock.playing && !video.paused) {
      video.pause();
    }
    if (video.seeking) continue;
    if (Math.abs(loopDrift(video.currentTime, target, clock.duration)) > tolerance) {
      video.currentTime = Math.min(target, Math.max(0, (video.duration || clock.duration) - 1e-3));
      seeked += 1;
    }
  }
  return seeked;
}
