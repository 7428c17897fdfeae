"""``benchmarks/eval_consistency.py`` reads what the save node writes (videos + ``_cameras.json``) and
prints the paper-style table; runs are grouped into settings by folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")
pytest.importorskip("av")

from cvd_core.camera import CameraSet
from nodes import _comfy, output
from tests.core.synthetic_scene import make_rig, make_scene, render_rig, to_pack_convention
from tests.nodes.test_output import _counter_save_paths

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_consistency.py"
VIEWS, FRAMES, SIZE = 3, 3, 96


def _load_script():
    spec = importlib.util.spec_from_file_location("eval_consistency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def saved_runs(tmp_path, monkeypatch):
    """Two settings saved by the real node function: true views (png and mp4) and shuffled views."""
    out = tmp_path / "output"
    out.mkdir()
    monkeypatch.setattr(_comfy, "output_directory", lambda: str(out))
    monkeypatch.setattr(_comfy, "save_paths", _counter_save_paths)
    monkeypatch.setattr(_comfy, "metadata_disabled", lambda: True)
    K, c2w = make_rig(VIEWS, FRAMES, SIZE, SIZE)
    frames = render_rig(make_scene(seed=0), K, c2w, SIZE, SIZE)
    rig = CameraSet(to_pack_convention(K), c2w, SIZE, SIZE)
    for prefix, views, fmt in (("eval/true/run", frames, "png"), ("eval/true/run", frames, "mp4"),
                               ("eval/shuffled/run", frames[[0, 2, 1]], "png")):
        output._run_save(images=torch.from_numpy(views.reshape(-1, SIZE, SIZE, 3)), views=0, filename_prefix=prefix,
                         fps=8.0, format=fmt, quality=100, save_grid=False, cameras=rig)
    return out / "eval"


def test_table_over_saved_runs(saved_runs, tmp_path, capsys):
    script = _load_script()
    assert [setting for setting, _ in script.find_runs(saved_runs)] == ["shuffled", "true", "true"]
    frames, rig = script.load_run(sorted((saved_runs / "true").glob("*_cameras.json"))[0])
    assert frames.shape == (VIEWS, FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8 and rig.n_views == VIEWS
    report_path = tmp_path / "reports.json"
    assert script.main([str(saved_runs), "--baseline", "true", "--json", str(report_path)]) == 0
    table = capsys.readouterr().out
    assert "| setting | runs | pair-frames |" in table and "Difference to true" in table
    rows = {row["setting"]: row for row in json.loads(report_path.read_text())["settings"]}
    assert rows["true"]["runs"] == 2 and rows["shuffled"]["runs"] == 1
    assert rows["true"]["pair_frames"] == 2 * 3 * (FRAMES - 1)  # frame 0 (shared pose) left out
    for tau in ("5", "10", "20"):
        assert rows["true"]["rotation_auc_pct"][tau] > rows["shuffled"]["rotation_auc_pct"][tau] + 25


def test_missing_sidecars_and_arguments(tmp_path, capsys):
    script = _load_script()
    assert script.main([str(tmp_path)]) == 1
    assert "no *_cameras.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main([])
    (tmp_path / "x_cameras.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a cvd_multiview_save/1 sidecar"):
        script.load_run(tmp_path / "x_cameras.json")
