"""Multi-view output: video files per view and a labelled grid (PyAV), PNG frame folders."""

from .frames import check_multiview_frames, frames_from_image_batch, to_uint8
from .grid import GridComposer, grid_layout, make_grid_frames, view_label_text
from .video_writer import FORMATS, quality_to_crf, read_video_metadata, write_multiview

__all__ = [
    "FORMATS",
    "GridComposer",
    "check_multiview_frames",
    "frames_from_image_batch",
    "grid_layout",
    "make_grid_frames",
    "quality_to_crf",
    "read_video_metadata",
    "to_uint8",
    "view_label_text",
    "write_multiview",
]
