"""Host syncs of one training step (forward, losses, backward) and one inference call of each
released variant, counted on the CPU (tests/host_syncs.py) and pinned: a new `.item()`,
`if t.any()`, `.tolist()`, nonzero or boolean-mask index fails here with its file and line.

What remains is what the model cannot do without:
- the input check's one read (input_checks.py): the images' finiteness and the instances'
  classes and boxes, read back together; of the host's own memory when the inputs are CPU
  tensors, as Detectron2's loader gives them, so no device sync then;
- one per matching (matcher.py): the cost's copy to the host for scipy's assignment; one per
  decoder layer (J = 6) and one for the two-stage proposals;
- inference, per image, Detectron2's detector_postprocess (meta_arch.py forward): Boxes.clip
  asserts the boxes are finite (one read), and the empty boxes are dropped by a boolean mask
  over boxes, scores and classes (three); the number of detections depends on the data, and the
  host takes the detections right after.
"""

import collections

import numpy as np
import pytest
import torch

from host_syncs import count_host_syncs
from model_cases import RELEASED_CONFIGS, build, image, training_batch

INPUT_CHECK = ("tolist", "modeling/input_checks.py:check_batched_inputs")
MATCHING = ("numpy", "modeling/matcher.py:match")
POSTPROCESS_CLIP = ("item", "modeling/meta_arch.py:forward")
POSTPROCESS_NONEMPTY = ("bool_index", "modeling/meta_arch.py:forward")

IMAGES = 2  # in the training batch and in the inference call
INFERENCE = {INPUT_CHECK: 1, POSTPROCESS_CLIP: IMAGES, POSTPROCESS_NONEMPTY: 3 * IMAGES}
# per variant: (training step, inference)
EXPECTED = {
    "ddetr_r50_single_scale.yaml": ({INPUT_CHECK: 1, MATCHING: 6}, INFERENCE),
    "ddetr_r50_single_scale_dc5.yaml": ({INPUT_CHECK: 1, MATCHING: 6}, INFERENCE),
    "ddetr_r50.yaml": ({INPUT_CHECK: 1, MATCHING: 6}, INFERENCE),
    "ddetr_r50_box_refine.yaml": ({INPUT_CHECK: 1, MATCHING: 6}, INFERENCE),
    "ddetr_r50_two_stage.yaml": ({INPUT_CHECK: 1, MATCHING: 7}, INFERENCE),
}


def _assert_counts(recorded, expected, what):
    counts = recorded.counts()
    assert counts == collections.Counter(expected), (
        f"{what}: host syncs changed; expected {dict(expected)}, got:\n{recorded.report()}"
    )


# 1.5 to 2.5 s a variant on 2 cores (9 to 14 s in all): the full-size architecture, forward
# and backward
@pytest.mark.slow
@pytest.mark.parametrize("name", RELEASED_CONFIGS)
def test_host_syncs_are_pinned(name):
    expected_train, expected_inference = EXPECTED[name]
    model = build(name)
    model.train()
    with count_host_syncs() as train:
        losses = model(training_batch())
        sum(losses.values()).backward()
    _assert_counts(train, expected_train, f"{name} training step")

    model.eval()
    # the second image is shown at 48x72 but its original size is 96x144
    inputs = [
        {"image": image(64, 96, 0), "height": 64, "width": 96},
        {"image": image(48, 72, 1), "height": 96, "width": 144},
    ]
    assert len(inputs) == IMAGES
    with count_host_syncs() as inference, torch.no_grad():
        model(inputs)
    _assert_counts(inference, expected_inference, f"{name} inference")


def _located_here(syncs):
    return [(s.op, s.where, s.via.split(":")[0]) for s in syncs]


def test_the_counter_sees_every_kind_of_sync():
    x = torch.tensor([0.5, -1.0, 2.0])
    with count_host_syncs() as recorded:
        x.sum().item()
        bool(x.any())
        int(x[0])
        x.tolist()
        x.numpy()
        np.asarray(x)  # what scipy does with a tensor
        x[x > 0]
        x.nonzero()
        x.masked_select(x > 0)
        torch.unique(x)
        torch.where(x > 0, x, 0.0)  # no sync: the output has the input's size
        x.masked_fill(x > 0, 0.0)  # no sync either
    ops = ["item", "item", "item", "tolist", "numpy", "numpy", "bool_index", "nonzero"]
    ops += ["masked_select", "unique"]
    here = "tests/modeling/test_host_syncs.py"
    assert _located_here(recorded.syncs) == [(op, "outside deformable_detr", here) for op in ops]
