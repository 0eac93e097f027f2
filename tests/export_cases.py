"""Shared pieces of the export tests: the shallow variants they export and the agreement check."""

from deformable_detr.export import compare_detections

# 1 encoder and 2 decoder layers keep exports fast; full depth was checked by hand (issue note)
SHALLOW = ("MODEL.DEFORMABLE_DETR.ENC_LAYERS", "1", "MODEL.DEFORMABLE_DETR.DEC_LAYERS", "2")


def assert_agree(expected, actual, what):
    """The export's detections are the eager model's 100 (scores 1e-4, boxes 1e-2 px)."""
    diff = compare_detections(expected, actual)
    assert diff["ok"], f"{what}: {diff}"
    assert diff["count"][0] == 100
