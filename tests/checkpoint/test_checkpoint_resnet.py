"""Tests of the conversion of torchvision's ImageNet ResNet weights
(deformable_detr.checkpoint.torchvision_resnet, tools/convert_torchvision_resnet.py).

The mapped weights make our backbone compute torchvision's features (res2..res5 = layer1..layer4,
and the dilated res5 of DC5); the converted file initialises the backbone of a full model through
Detectron2's checkpointer, the rest reported missing; bad files are refused with their problem.
Random weights and BN statistics, nothing downloaded.
"""

import pytest
import torch
import torchvision

from checkpoint_cases import (
    RecordingCheckpointer,
    assert_bad_file_refused,
    run_tool,
    write_code_running_file,
)
from deformable_detr.checkpoint import (
    convert_torchvision_resnet,
    convert_torchvision_resnet_file,
    torchvision_to_detectron2_name,
)
from model_cases import build
from torchvision_cases import assert_same_features, random_resnet50, torchvision_features

ALL_LEVELS = ["MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]]


@pytest.mark.parametrize(
    "torchvision_name, detectron2_name",
    [
        ("conv1.weight", "stem.conv1.weight"),
        ("bn1.running_var", "stem.conv1.norm.running_var"),
        ("layer1.0.conv1.weight", "res2.0.conv1.weight"),
        ("layer1.0.bn2.bias", "res2.0.conv2.norm.bias"),
        ("layer1.0.downsample.0.weight", "res2.0.shortcut.weight"),
        ("layer2.0.downsample.1.running_mean", "res3.0.shortcut.norm.running_mean"),
        ("layer3.5.conv2.weight", "res4.5.conv2.weight"),
        ("layer4.2.bn3.weight", "res5.2.conv3.norm.weight"),
    ],
)
def test_names(torchvision_name, detectron2_name):
    assert torchvision_to_detectron2_name(torchvision_name) == detectron2_name


@pytest.mark.parametrize("name", ["fc.weight", "layer5.0.conv1.weight", "layer1.0.relu.weight"])
def test_names_outside_the_body_are_refused(name):
    with pytest.raises(ValueError, match="not a parameter of torchvision's ResNet body"):
        torchvision_to_detectron2_name(name)


def test_converted_file_initialises_the_backbone_with_torchvisions_features(tmp_path):
    reference = random_resnet50(0)
    source, converted = tmp_path / "resnet50-random.pth", tmp_path / "r50.pth"
    torch.save(reference.state_dict(), source)  # as torchvision saves it: fc and BN counters too
    done = run_tool("convert_torchvision_resnet.py", "--input", source, "--output", converted)
    assert done.returncode == 0, done.stderr
    assert "MODEL.WEIGHTS" in done.stdout

    model = build("ddetr_r50.yaml", opts=ALL_LEVELS)
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(str(converted))
    incompatible = checkpointer.incompatible
    backbone = {k for k in model.state_dict() if k.startswith("backbone.")}
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    assert set(incompatible.missing_keys) == set(model.state_dict()) - backbone

    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_same_features(model.backbone(x), torchvision_features(reference, x))


def test_dc5_backbone_matches_torchvisions_dilated_resnet():
    reference = random_resnet50(2, dilation=True)
    model = build("ddetr_r50_single_scale_dc5.yaml")
    converted = convert_torchvision_resnet(reference.state_dict())
    model.backbone.load_state_dict(
        {k[len("backbone.") :]: v for k, v in converted.items()}, strict=True
    )
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model.backbone(x)
        expected = torchvision_features(reference, x)["res5"]
    assert ours["res5"].shape[-2:] == (6, 8)  # stride 16
    assert_same_features(ours, {"res5": expected})


def test_fc_and_batch_counters_are_dropped_and_other_depths_accepted():
    with torch.device("meta"):
        weights = torchvision.models.resnet101().state_dict()
    converted = convert_torchvision_resnet(weights)
    assert len(converted) == sum(
        1 for k in weights if not k.startswith("fc.") and "num_batches_tracked" not in k
    )
    assert "backbone.res4.22.conv3.norm.running_var" in converted


def _meta_resnet50():
    with torch.device("meta"):
        return torchvision.models.resnet50().state_dict()


def _edited(edit):
    weights = _meta_resnet50()
    edit(weights)
    return weights


@pytest.mark.parametrize(
    "content, message",
    [
        ([torch.zeros(1)], "expected a state dict .*, got list"),
        ({"state_dict": _meta_resnet50()}, "layer3 has 0 blocks"),
        (
            _edited(lambda w: w.pop("layer2.1.conv1.weight")),
            "1 missing key.*: layer2.1.conv1.weight",
        ),
        (
            _edited(lambda w: w.update({"layer1.0.extra.weight": torch.zeros(1)})),
            "1 unknown key.*: layer1.0.extra.weight",
        ),
        (
            _edited(lambda w: w.update({"layer4.0.conv2.weight": torch.zeros(512, 512, 1, 1)})),
            r"1 wrong shape.*: layer4.0.conv2.weight expected \(512, 512, 3, 3\), "
            r"got \(512, 512, 1, 1\)",
        ),
    ],
)
def test_bad_files_are_refused_with_their_problem(tmp_path, content, message):
    assert_bad_file_refused(convert_torchvision_resnet_file, tmp_path, content, message)


def test_code_in_the_file_is_refused_and_never_run(tmp_path):
    marker, path = tmp_path / "code_ran", tmp_path / "payload.pth"
    write_code_running_file(path, marker, wrap=lambda payload: {"conv1.weight": payload})
    with pytest.raises(ValueError, match="(?s)weights_only=True.*unsafe"):
        convert_torchvision_resnet_file(str(path), str(tmp_path / "out.pth"))
    assert not marker.exists()
