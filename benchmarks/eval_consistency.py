"""Paper-style consistency table over folders of saved multi-view videos (or the synthetic scene).

    python benchmarks/eval_consistency.py ComfyUI/output/cvd_eval [more folders] [--baseline random]
    python benchmarks/eval_consistency.py --synthetic          # known geometry: true / shuffled / perturbed

Input: what ``CVD Save Multi-View Video`` writes with cameras connected: ``<name>_<counter>_cameras.json``
(format ``cvd_multiview_save/1``: the rig and its view files) beside ``_v<i>.mp4`` / ``.webm`` /
``_v<i>/frame_%05d.png``. Every sidecar found under a folder is one run; runs are grouped into
settings by the folder that holds them (relative to the folder given), so save each setting with its
own ``filename_prefix`` (``cvd_eval/random/run``, ``cvd_eval/all_pairs/run``, ...).

For each run: :func:`cvd_core.metrics.multiview_report` (the consistency node's computation): CVD's
pose protocol (AUC@5/10/20 of rotation and translation errors, SuperGlue's P and MS), the Mat.Pix-style
matched-pixel count and the Sampson error. Per setting, AUCs are computed over the pooled pair-frames
of all its runs (as the paper pools its videos), not averaged per run. ``--baseline SETTING`` adds the
difference of every other setting to that one, measured in the same invocation. ``--json`` writes
every report.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvd_core.camera import CameraSet  # noqa: E402
from cvd_core.metrics import ESTIMATORS, multiview_report  # noqa: E402
from cvd_core.metrics.pose_accuracy import pose_summary  # noqa: E402

SIDECAR_SUFFIX = "_cameras.json"
SIDECAR_FORMAT = "cvd_multiview_save/1"


# ------------------------------------------------------------------------------ reading saved runs
def _read_video(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _read_png_folder(folder: Path, pattern: str, frames: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(folder / (pattern % t)).convert("RGB")) for t in range(frames)])


def load_run(sidecar_path: Path) -> tuple[np.ndarray, CameraSet]:
    """``([V, T, H, W, 3] uint8, rig for that frame size)`` of one saved run."""
    sidecar = json.loads(sidecar_path.read_text())
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{sidecar_path}: not a {SIDECAR_FORMAT} sidecar (format {sidecar.get('format')!r})")
    folder = sidecar_path.parent
    views = []
    for view in sorted(sidecar["views"], key=lambda v: v["view"]):
        path = folder / view["filename"]
        frames = _read_png_folder(path, view["pattern"], sidecar["frames"]) if view["format"] == "png" \
            else _read_video(path)
        views.append(frames[: sidecar["frames"]])
    frames = np.stack(views)
    rig = CameraSet.from_dict(sidecar["cameras"])
    height, width = frames.shape[2:4]
    if (width, height) != (rig.width, rig.height):
        rig = rig.resized(width, height)
    return frames, rig


def find_runs(folder: Path) -> list[tuple[str, Path]]:
    """``[(setting, sidecar path)]``: every sidecar under ``folder``, its setting the holding folder."""
    runs = []
    for path in sorted(Path(folder).rglob(f"*{SIDECAR_SUFFIX}")):
        relative = path.parent.relative_to(folder)
        runs.append((str(relative) if str(relative) != "." else Path(folder).name, path))
    return runs


# ------------------------------------------------------------------------------ the table
def setting_row(name: str, reports: list[dict]) -> dict:
    """Pooled figures of one setting: pose AUCs over all pair-frames of its runs."""
    rows = [row for report in reports for entry in report["pose"]["pairs"] for row in entry["frames"]]
    pose = pose_summary(rows)
    counts = [row["matched_pixels"] for report in reports for entry in report["match_count"]["pairs"]
              for row in entry["frames"] if not row["same_pose"]]
    sampson = [report["overall"]["sampson_median_px"] for report in reports
               if report["overall"]["sampson_median_px"] is not None]
    return {"setting": name, "runs": len(reports), "pair_frames": pose["evaluated"], "failures": pose["failures"],
            "rotation_auc_pct": pose["rotation_auc_pct"], "translation_auc_pct": pose["translation_auc_pct"],
            "precision_pct": pose["precision_pct"], "matching_score_pct": pose["matching_score_pct"],
            "matched_pixels": float(np.mean(counts)) if counts else None,
            "sampson_median_px": float(np.mean(sampson)) if sampson else None}


def _auc(values: Optional[dict]) -> str:
    return "n/a" if values is None else "/".join(f"{v:5.1f}" for v in values.values())


def _num(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict], baseline: Optional[str] = None) -> str:
    header = ("| setting | runs | pair-frames | failed | Rot AUC@5/10/20 | Trans AUC@5/10/20 | P | MS | Mat.Pix | "
              "Sampson px |")
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        lines.append(f"| {row['setting']} | {row['runs']} | {row['pair_frames']} | {row['failures']} | "
                     f"{_auc(row['rotation_auc_pct'])} | {_auc(row['translation_auc_pct'])} | "
                     f"{_num(row['precision_pct'])} | {_num(row['matching_score_pct'])} | "
                     f"{_num(row['matched_pixels'], 0)} | {_num(row['sampson_median_px'], 3)} |")
    if baseline is not None:
        base = next((r for r in rows if r["setting"] == baseline), None)
        if base is None:
            raise SystemExit(f"--baseline {baseline!r} is not one of the settings: {[r['setting'] for r in rows]}")
        lines += ["", f"Difference to {baseline} (AUC in percentage points; same invocation, same matcher):",
                  "| setting | Rot AUC@5/10/20 | Trans AUC@5/10/20 | Mat.Pix ratio |", "|---|---|---|---|"]
        for row in rows:
            if row is base:
                continue
            lines.append(f"| {row['setting']} | {_delta(row['rotation_auc_pct'], base['rotation_auc_pct'])} | "
                         f"{_delta(row['translation_auc_pct'], base['translation_auc_pct'])} | "
                         f"{_ratio(row['matched_pixels'], base['matched_pixels'])} |")
    return "\n".join(lines)


def _delta(a: Optional[dict], b: Optional[dict]) -> str:
    if a is None or b is None:
        return "n/a"
    return "/".join(f"{a[k] - b[k]:+5.1f}" for k in a)


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


# ------------------------------------------------------------------------------ synthetic scene
def synthetic_settings(size: int = 128) -> list[tuple[str, np.ndarray, CameraSet]]:
    """The tests' ray-cast scene through its rig: true views, views shuffled, view 1 turned by k degrees."""
    try:
        from tests.core.synthetic_scene import make_rig, make_scene, render_rig, render_view, to_pack_convention
    except ImportError as exc:  # a user's install without the tests folder
        raise SystemExit(f"--synthetic needs the repository's tests/ folder: {exc}") from None
    K, c2w = make_rig(3, 4, size, size)
    scene = make_scene(seed=0)
    frames = render_rig(scene, K, c2w, size, size)
    rig = CameraSet(to_pack_convention(K), c2w, size, size)
    settings = [("true rig", frames, rig), ("views shuffled (0,2,1)", frames[[0, 2, 1]], rig)]
    for k in (1.0, 5.0, 10.0, 20.0):
        turn = np.eye(4)
        turn[0, 0] = turn[2, 2] = math.cos(math.radians(k))
        turn[0, 2], turn[2, 0] = math.sin(math.radians(k)), -math.sin(math.radians(k))
        views = frames.copy()
        views[1, 1:] = [render_view(scene, K[1, t], c2w[1, t] @ turn, size, size) for t in range(1, 4)]
        settings.append((f"view 1 turned {k:g} deg", views, rig))
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="folders holding saved runs (searched recursively)")
    parser.add_argument("--synthetic", action="store_true", help="evaluate the tests' synthetic scene instead")
    parser.add_argument("--detector", choices=("sift", "orb"), default="sift")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="usac_accurate")
    parser.add_argument("--max-frames", type=int, default=0, help="frames per run, spread evenly (0 = all)")
    parser.add_argument("--baseline", help="setting to compare the others with")
    parser.add_argument("--json", type=Path, help="write every report to this file")
    args = parser.parse_args(argv)
    if not args.folders and not args.synthetic:
        parser.error("give folders of saved runs, or --synthetic")

    evaluations: dict[str, list] = {}
    if args.synthetic:
        for name, frames, rig in synthetic_settings():
            evaluations[name] = [("synthetic", frames, rig)]
    for folder in args.folders:
        runs = find_runs(folder)
        if not runs:
            print(f"[eval] no *{SIDECAR_SUFFIX} under {folder}: save with CVD Save Multi-View Video and cameras "
                  "connected", file=sys.stderr)
        for setting, path in runs:
            frames, rig = load_run(path)
            evaluations.setdefault(setting, []).append((str(path), frames, rig))

    reports: dict[str, list] = {}
    for setting, runs in evaluations.items():
        for source, frames, rig in runs:
            report = multiview_report(frames, rig, detector=args.detector, max_frames=args.max_frames or None,
                                      estimator=args.estimator)
            report["source"] = source
            reports.setdefault(setting, []).append(report)
            print(f"[eval] {setting}: {source} ({rig.n_views} views x {rig.n_frames} frames, "
                  f"{rig.width}x{rig.height})", file=sys.stderr)
    if not reports:
        return 1
    rows = [setting_row(name, group) for name, group in reports.items()]
    print(f"matcher {args.detector} + Lowe 0.75; pose {args.estimator}; AUC over pooled pair-frames, failures as "
          "infinite error; P/MS: SuperGlue's definitions (epipolar error < 5e-4); Mat.Pix: matches kept by a 1 px "
          "RANSAC (sparse: not comparable with GIM's dense counts)\n")
    print(format_table(rows, args.baseline))
    if args.json:
        args.json.write_text(json.dumps({"settings": rows, "reports": reports}, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
