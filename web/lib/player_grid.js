// A grid of synchronized players for the views of one multi-view result.
//
// `entry` is one element of the node's ui["cvd_multiview"] list:
//   {views: [{view, label, filename, subfolder, type, format, frames, width, height, pattern?}],
//    grid: {...same keys...} | null, fps, frames, width, height, cameras}
// Video views are <video> elements slaved to one SharedClock; PNG-sequence views (format "png")
// are an <img> whose frame is chosen from the same clock. Nothing here is saved in the workflow.

import { SharedClock, slaveVideos } from "./shared_clock.js";

const VIDEO_FORMATS = new Set(["mp4", "webm", "mov", "mkv"]);

function element(tag, style, text) {
  const el = document.createElement(tag);
  if (style) Object.assign(el.style, style);
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Number of grid columns for n views: as square as possible, wider than tall. */
export function gridColumns(n) {
  return Math.max(1, Math.ceil(Math.sqrt(Math.max(1, n))));
}

/** Height in CSS pixels the grid wants at `width`: the cells at the video aspect plus the controls. */
export function preferredHeight(entry, width) {
  const views = entry?.views?.length || 1;
  const columns = gridColumns(views);
  const rows = Math.ceil(views / columns);
  const aspect = (Number(entry?.height) || 1) / (Number(entry?.width) || 1);
  const cellWidth = Math.max(40, (width - 20) / columns);
  return Math.round(rows * (cellWidth * aspect + 18) + 64);
}

/** The file name of frame `index` of a PNG sequence view (E2's "pattern", e.g. "name/frame_%05d.png"). */
export function patternFrameName(pattern, index) {
  return pattern.replace(/%0?(\d*)d/, (_, width) => String(index).padStart(Number(width) || 0, "0"));
}

export class PlayerGrid {
  /**
   * @param {HTMLElement} host  element to fill (its previous content is replaced)
   * @param {object} entry  one ui["cvd_multiview"] entry
   * @param {(file: object, filename?: string) => string} urlFor  URL of an output file (/view?...)
   */
  constructor(host, entry, urlFor) {
    this.host = host;
    this.entry = entry;
    this.clock = new SharedClock({ fps: entry.fps, frames: entry.frames });
    this.videos = [];
    this.sequences = [];
    this.resyncs = 0;
    this.disposed = false;
    host.replaceChildren(this.build(urlFor));
    this.clock.play();
    this.tick = this.tick.bind(this);
    this.frameRequest = requestAnimationFrame(this.tick);
  }

  build(urlFor) {
    const entry = this.entry;
    const root = element("div", {
      display: "flex", flexDirection: "column", width: "100%", height: "100%", boxSizing: "border-box",
      gap: "4px", font: "11px sans-serif", color: "#ddd", overflow: "hidden",
    });
    root.className = "cvd-player-grid";
    const grid = element("div", {
      display: "grid", gridTemplateColumns: `repeat(${gridColumns(entry.views.length)}, minmax(0, 1fr))`,
      gap: "4px", flex: "1 1 auto", minHeight: "0", gridAutoRows: "minmax(0, 1fr)",
    });
    entry.views.forEach((view, i) => grid.append(this.buildCell(view, i, urlFor)));
    root.append(grid, this.buildControls(), this.buildLinks(urlFor));
    return root;
  }

  buildCell(view, i, urlFor) {
    const cell = element("div", { display: "flex", flexDirection: "column", minHeight: "0", minWidth: "0" });
    const caption = element("div", { whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" },
      `view ${view.view ?? i}: ${view.label ?? ""}`);
    caption.className = "cvd-view-label";
    const mediaStyle = { width: "100%", flex: "1 1 auto", minHeight: "0", objectFit: "contain", background: "#000" };
    let media;
    if (VIDEO_FORMATS.has(String(view.format || "").toLowerCase())) {
      media = element("video", mediaStyle);
      Object.assign(media, { muted: true, loop: true, playsInline: true, preload: "auto", autoplay: false });
      media.setAttribute("muted", "");
      media.addEventListener("error", () => {
        caption.textContent = `view ${view.view ?? i}: ${view.label ?? ""} `
          + `(this browser cannot play ${view.format}; use the download link)`;
      });
      media.src = urlFor(view);
      this.videos.push(media);
    } else {
      media = element("img", mediaStyle);
      const names = view.pattern
        ? Array.from({ length: Number(view.frames) || this.clock.frames }, (_, k) => patternFrameName(view.pattern, k))
        : [view.filename];
      const urls = names.map((name) => urlFor(view, name));
      names.length > 1 && urls.forEach((url) => { new Image().src = url; }); // preload the sequence
      media.src = urls[0];
      this.sequences.push({ img: media, urls, shown: 0 });
    }
    media.className = "cvd-view-media";
    cell.append(caption, media);
    return cell;
  }

  buildControls() {
    const bar = element("div", { display: "flex", alignItems: "center", gap: "6px", flex: "0 0 auto" });
    this.playButton = element("button", { minWidth: "54px", cursor: "pointer" });
    this.playButton.className = "cvd-play";
    this.playButton.addEventListener("click", () => { this.clock.toggle(); this.update(); });
    this.slider = element("input", { flex: "1 1 auto", minWidth: "40px" });
    Object.assign(this.slider, { type: "range", min: "0", max: String(this.clock.frames - 1), step: "1", value: "0" });
    this.slider.className = "cvd-timeline";
    this.slider.title = "Shared timeline of all views (frames)";
    this.slider.addEventListener("input", () => { this.clock.seekFrame(Number(this.slider.value)); this.update(); });
    // While the user drags the thumb, the clock must not move the thumb under the pointer.
    this.slider.addEventListener("pointerdown", () => { this.scrubbing = true; });
    for (const type of ["pointerup", "pointercancel", "change"]) {
      this.slider.addEventListener(type, () => { this.scrubbing = false; });
    }
    this.frameText = element("span", { minWidth: "92px", textAlign: "right", fontVariantNumeric: "tabular-nums" });
    this.frameText.className = "cvd-frame";
    bar.append(this.playButton, this.slider, this.frameText);
    // The graph canvas must not treat clicks and drags on the controls as node drags.
    for (const type of ["pointerdown", "mousedown", "wheel"]) bar.addEventListener(type, (e) => e.stopPropagation());
    return bar;
  }

  buildLinks(urlFor) {
    const links = element("div", { display: "flex", flexWrap: "wrap", gap: "8px", flex: "0 0 auto" });
    links.append(element("span", { color: "#aaa" }, "download:"));
    const add = (file, text) => {
      if (!file || !file.filename) return;
      const a = element("a", { color: "#8cf" }, text);
      a.href = urlFor(file);
      a.download = file.filename.split("/").pop();
      a.className = "cvd-download";
      links.append(a);
    };
    this.entry.views.forEach((view, i) => add(view, `view ${view.view ?? i}`));
    add(this.entry.grid, "grid");
    return links;
  }

  /** One animation frame: slave the players to the clock and refresh the controls. */
  tick() {
    if (this.disposed) return;
    try {
      this.update();
    } finally {
      this.frameRequest = requestAnimationFrame(this.tick);
    }
  }

  update() {
    this.resyncs += slaveVideos(this.clock, this.videos);
    const frame = this.clock.frame();
    for (const sequence of this.sequences) {
      const index = Math.min(frame, sequence.urls.length - 1);
      if (index !== sequence.shown) { sequence.img.src = sequence.urls[index]; sequence.shown = index; }
    }
    if (this.slider && !this.scrubbing) this.slider.value = String(frame);
    if (this.frameText) this.frameText.textContent = `frame ${frame + 1}/${this.clock.frames} · ${this.clock.fps} fps`;
    if (this.playButton) this.playButton.textContent = this.clock.playing ? "pause" : "play";
  }

  /** Stop the loop and release the media (called when the node is re-executed or removed). */
  dispose() {
    this.disposed = true;
    cancelAnimationFrame(this.frameRequest);
    for (const video of this.videos) {
      video.pause();
      video.removeAttribute("src");
      video.load();
    }
    this.videos = [];
    this.sequences = [];
  }
}
