"""Sizes that torch.export keeps symbolic (deformable_detr/modeling/symbolic_sizes.py): the
padding written with ints pads exactly as Detectron2's ImageList.from_tensors (the reference),
and the model exported once with symbolic height and width gives the eager model's detections at
other sizes, without Inductor's compile (the packages are tested in tests/deploy)."""

import pytest
import torch
from detectron2.structures import ImageList
from torch.export import Dim

from deformable_detr.export import DetectionExportWrapper, eager_detections, symbolic_min_side
from deformable_detr.modeling import symbolic_sizes
from export_cases import SHALLOW, assert_agree
from model_cases import build, image


@pytest.mark.parametrize(
    "sizes,divisibility,constraints",
    [
        ([(3, 5)], 0, None),
        ([(3, 5)], 32, None),
        ([(3, 5), (7, 2), (4, 4)], 0, None),
        ([(3, 5), (33, 2)], 32, None),
        ([(3, 5), (7, 2)], 0, {"size_divisibility": 4}),
        ([(3, 5), (7, 2)], 32, {"square_size": 16}),
    ],
)
def test_int_padding_is_detectron2s(sizes, divisibility, constraints, monkeypatch):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    expected = ImageList.from_tensors(tensors, divisibility, padding_constraints=constraints)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the branch of export
    actual = symbolic_sizes.pad_images(tensors, divisibility, constraints)
    assert torch.equal(actual.tensor, expected.tensor)
    assert [tuple(s) for s in actual.image_sizes] == [tuple(s) for s in expected.image_sizes]


def test_sizes_tensor_is_int64_in_both_branches(monkeypatch):
    eager = symbolic_sizes.sizes_tensor((3, 5), torch.device("cpu"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    compiled = symbolic_sizes.sizes_tensor((3, 5), torch.device("cpu"))
    for t in (eager, compiled):
        assert t.dtype == torch.int64 and t.tolist() == [3, 5]


@pytest.mark.parametrize("name", ["ddetr_r50.yaml", "ddetr_r50_two_stage.yaml"])
def test_one_export_follows_every_size(name):
    """torch.export with H and W as Dim: no size is fixed in the graph (export raises when the
    model specialises a Dim), and the graph gives eager's detections at three other sizes."""
    model = build(name, SHALLOW).eval()
    low = symbolic_min_side(model)
    sides = Dim("height", min=low, max=1333), Dim("width", min=low, max=1333)
    with torch.no_grad():
        exported = torch.export.export(
            DetectionExportWrapper(model),
            (image(128, 160, 0),),
            dynamic_shapes={"image": {1: sides[0], 2: sides[1]}},
        ).module()
        for size in ((160, 128), (low, 250), (200, 96 if low <= 96 else low)):
            img = image(*size, 1)
            actual = tuple(o.numpy() for o in exported(img))
            assert_agree(eager_detections(model, img), actual, f"{name} exported, {size}")
