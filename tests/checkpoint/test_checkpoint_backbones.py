"""Tests of the converters of ImageNet weights for Swin, MViTv2, ViT (MAE) and RegNet (pycls,
torchvision): deformable_detr/checkpoint/{imagenet,swin,mvit,vit,regnet}.py and
tools/convert_{swin,mvit,vit,regnet}.py.

Files in each official layout are rebuilt here (backbone_weights_cases.py), never downloaded: at
real size on the meta device, the converted names and shapes fill the backbone that the printed
config keys build, but for the keys each converter documents as not in the file (so does every
other variant of the converters' tables, the transformers' marked slow); at a small size
with random values, the converted file initialises the model through Detectron2's checkpointer
and every value lands where the authors' name says; torchvision's RegNetY-400MF computes the same
stage outputs as our backbone with its converted weights. Files of another family, truncated,
extended, of another size or holding code are refused with their problem.
"""

import os
import re

import pytest
import torch
import torchvision
from detectron2.modeling import build_backbone

from backbone_weights_cases import (
    CASES,
    expected_names,
    meta_state_dict,
    small_family,
    official_vit,
    random_state_dict,
)
from checkpoint_cases import RecordingCheckpointer, run_tool, write_code_running_file
from cli_cases import load_script
from deformable_detr.checkpoint import (
    MVIT,
    PYCLS_REGNET,
    SWIN,
    TORCHVISION_REGNET,
    VIT,
    convert_backbone,
    convert_backbone_file,
    torchvision_to_detectron2_regnet_name,
)
from model_cases import build, model_cfg
from torchvision_cases import randomize_batch_norms


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_size_file_fills_the_backbone_that_the_printed_keys_build(name):
    case = CASES[name]
    with torch.device("meta"):
        official = case.real_tree().state_dict()
    converted, variant, _ = convert_backbone(case.wrap(official), [case.family])
    assert variant == case.family.variants[case.default]

    expected = expected_names(case, official)
    assert set(converted) == set(expected.values())
    assert all(converted[expected[k]].shape == official[k].shape for k in expected)
    cfg = model_cfg(case.config, ["MODEL.WEIGHTS", "", *variant.opts])
    model = {f"backbone.{k}": v.shape for k, v in build_backbone(cfg).state_dict().items()}
    assert {k: v.shape for k, v in converted.items()} == {
        k: v for k, v in model.items() if not re.fullmatch(case.not_in_file, k)
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_small_file_initialises_the_backbone_through_the_checkpointer(tmp_path, name):
    case = CASES[name]
    official = random_state_dict(case.small_tree(), seed=0)
    source, target = tmp_path / "official.pth", tmp_path / "converted.pth"
    torch.save(case.wrap(official), source)
    variant, family = convert_backbone_file(str(source), str(target), [small_family(case)])
    assert variant is case.small and family.layout_name == case.family.layout_name

    model = build(case.config, opts=["MODEL.WEIGHTS", "", *case.small.opts])
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(str(target))
    incompatible = checkpointer.incompatible
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    backbone = {k for k in model.state_dict() if k.startswith("backbone.")}
    assert set(incompatible.missing_keys) == (set(model.state_dict()) - backbone) | {
        k for k in backbone if re.fullmatch(case.not_in_file, k)
    }
    state = model.state_dict()
    for official_name, model_name in expected_names(case, official).items():
        torch.testing.assert_close(
            state[model_name], official[official_name], rtol=0, atol=0, msg=official_name
        )


# the variants but the configs' own (test_real_size_file_...): RegNet builds on the meta device,
# the others call .item() on a tensor while they build and take seconds at real size
OTHER_VARIANTS = [
    pytest.param(name, family, key, marks=[] if name == "regnet" else [pytest.mark.slow], id=key)
    for name, families in (
        ("swin", [SWIN]),
        ("mvit", [MVIT]),
        ("vit", [VIT]),
        ("regnet", [PYCLS_REGNET, TORCHVISION_REGNET]),
    )
    for family in families
    for key in family.variants
    if key != CASES[name].default
]


@pytest.mark.parametrize("name, family, key", OTHER_VARIANTS)
def test_every_other_variant_fills_the_backbone_that_its_keys_build(name, family, key):
    variant = family.variants[key]
    cfg = model_cfg(CASES[name].config, ["MODEL.WEIGHTS", "", *variant.opts])
    with torch.device("meta" if name == "regnet" else "cpu"):
        model = build_backbone(cfg).state_dict()
    layout = family.layout(variant.params)
    converted = {f"backbone.{family.rename(k)}": shape for k, shape in layout.items()}
    assert converted == {
        f"backbone.{k}": tuple(v.shape)
        for k, v in model.items()
        if not re.fullmatch(CASES[name].not_in_file, f"backbone.{k}")
    }


@pytest.mark.parametrize("final, classes", [("fc_norm", 1000), ("norm", 1000)])
def test_fine_tuned_mae_and_deit_files_lose_only_their_head(final, classes):
    official = meta_state_dict(lambda: official_vit(64, 3, final=final, classes=classes))
    converted, _, _ = convert_backbone({"model": official}, [small_family(CASES["vit"])])
    assert set(converted) == {
        f"backbone.net.{k}"
        for k in official
        if k.startswith(("blocks.", "patch_embed.", "pos_embed"))
    }


def _torchvision_stages(model, x):
    x = model.stem(x)
    stages = {}
    for k, stage in enumerate(model.trunk_output, start=1):
        x = stage(x)
        stages[f"s{k}"] = x
    return stages


def test_torchvision_regnet_computes_torchvisions_stage_outputs(tmp_path):
    torch.manual_seed(0)
    reference = randomize_batch_norms(torchvision.models.regnet_y_400mf())
    source, target = tmp_path / "regnet_y_400mf-random.pth", tmp_path / "converted.pth"
    torch.save(reference.state_dict(), source)
    done = run_tool("convert_regnet.py", "--input", source, "--output", target)
    assert done.returncode == 0, done.stderr
    use = next(line for line in done.stdout.splitlines() if line.startswith("use: "))
    opts = use.split("(")[0].split()[1:]
    assert opts[:2] == ["MODEL.WEIGHTS", str(target)] and "RGB" in opts

    model = build("ddetr_regnety_4gf.yaml", opts=opts[2:]).eval()
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(str(target))
    assert [k for k in checkpointer.incompatible.missing_keys if k.startswith("backbone.")] == []
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, expected = model.backbone(x), _torchvision_stages(reference, x)
    assert sorted(ours) == ["s2", "s3", "s4"]
    for stage, value in ours.items():
        torch.testing.assert_close(value, expected[stage], rtol=1e-5, atol=1e-5, msg=stage)


@pytest.mark.parametrize(
    "torchvision_name, detectron2_name",
    [
        ("stem.0.weight", "stem.conv.weight"),
        ("stem.1.running_var", "stem.bn.running_var"),
        ("trunk_output.block1.block1-0.proj.0.weight", "s1.b1.proj.weight"),
        ("trunk_output.block1.block1-0.proj.1.bias", "s1.b1.bn.bias"),
        ("trunk_output.block2.block2-3.f.b.0.weight", "s2.b4.f.b.weight"),
        ("trunk_output.block3.block3-1.f.c.1.running_mean", "s3.b2.f.c_bn.running_mean"),
        ("trunk_output.block4.block4-0.f.se.fc1.bias", "s4.b1.f.se.f_ex.0.bias"),
        ("trunk_output.block4.block4-0.f.se.fc2.weight", "s4.b1.f.se.f_ex.2.weight"),
    ],
)
def test_torchvision_regnet_names(torchvision_name, detectron2_name):
    assert torchvision_to_detectron2_regnet_name(torchvision_name) == detectron2_name


@pytest.mark.parametrize(
    "name",
    [
        "fc.weight",
        "trunk_output.block1.block2-0.f.a.0.weight",
        "trunk_output.block1.block1-0.f.d.0.weight",
    ],
)
def test_torchvision_regnet_names_outside_the_body_are_refused(name):
    with pytest.raises(ValueError, match="not a parameter of torchvision's RegNet body"):
        torchvision_to_detectron2_regnet_name(name)


@pytest.mark.parametrize(
    "families, content, message",
    [
        (
            [SWIN],
            {"layer1.0.conv1.weight": torch.zeros(1)},
            "this is a torchvision ResNet state dict, not a Swin Transformer checkpoint",
        ),
        (
            [VIT],
            {"model_state": meta_state_dict(CASES["mvit"].small_tree)},
            "this is an MViTv2 checkpoint .*, not a ViT checkpoint",
        ),
        (
            [MVIT],
            {"model": meta_state_dict(CASES["swin"].small_tree)},
            "this is a Swin Transformer checkpoint .*, not an MViTv2 checkpoint",
        ),
        (
            [PYCLS_REGNET, TORCHVISION_REGNET],
            {"model": meta_state_dict(CASES["vit"].small_tree)},
            "this is a ViT checkpoint .*, not a pycls RegNet checkpoint or a torchvision RegNet",
        ),
        (
            [SWIN],
            {"model": {"backbone.patch_embed.proj.weight": torch.zeros(1)}},
            "this is a Detectron2 checkpoint .*converted already",
        ),
        (
            [SWIN],
            {"model": {"transformer.encoder.layers.0.linear1.weight": torch.zeros(1)}},
            "this is a released Deformable DETR checkpoint",
        ),
        ([VIT], {"weights": torch.zeros(1)}, r"this is none of the layouts .*\['weights'\]"),
        ([VIT], [torch.zeros(1)], "expected a ViT checkpoint .*, got list"),
    ],
)
def test_files_of_other_layouts_are_refused_by_name(families, content, message):
    with pytest.raises(ValueError, match=message):
        convert_backbone(content, families)


def _small_swin(edit):
    official = dict(meta_state_dict(CASES["swin"].small_tree))
    edit(official)
    return official


@pytest.mark.parametrize(
    "official, message",
    [
        (
            _small_swin(lambda w: w.pop("layers.1.blocks.0.attn.qkv.weight")),
            "1 missing key.*: layers.1.blocks.0.attn.qkv.weight",
        ),
        (
            _small_swin(lambda w: w.update({"layers.0.blocks.0.attn.extra": torch.zeros(1)})),
            "1 unknown key.*: layers.0.blocks.0.attn.extra",
        ),
        (
            _small_swin(lambda w: w.update({"norm.weight": torch.zeros(7)})),
            r"1 wrong shape.*: norm.weight expected \(256,\), got \(7,\)",
        ),
    ],
)
def test_truncated_extended_or_misshapen_files_are_refused(official, message):
    with pytest.raises(ValueError, match=message):
        convert_backbone({"model": official}, [small_family(CASES["swin"])])


def test_a_file_of_another_variant_is_refused_with_the_keys_that_build_it():
    swin_t = meta_state_dict(CASES["swin"].real_tree)
    with pytest.raises(ValueError) as error:
        convert_backbone({"model": swin_t}, [SWIN], variant="swin_b")
    message = str(error.value)
    assert r"patch_embed.proj.weight expected (128, 3, 4, 4), got (96, 3, 4, 4)" in message
    assert "The file holds Swin-T" in message and "variant 'swin_t'" in message
    assert "MODEL.SWIN.EMBED_DIM 96" in message and "MODEL.SWIN.NUM_HEADS [3,6,12,24]" in message


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_size_no_variant_has_is_refused(name):
    case = CASES[name]  # the small trees are not in the converters' tables
    with pytest.raises(ValueError, match="The file is none of the variants this converter knows"):
        convert_backbone(case.wrap(meta_state_dict(case.small_tree)), [case.family])


def test_an_unknown_variant_name_is_refused():
    with pytest.raises(ValueError, match=r"variant must be one of \['mvitv2_b', .*got 'swin_t'"):
        convert_backbone(
            {"model_state": meta_state_dict(CASES["mvit"].real_tree)}, [MVIT], "swin_t"
        )


def test_code_in_the_file_is_refused_and_never_run(tmp_path):
    marker, path = tmp_path / "code_ran", tmp_path / "payload.pth"
    write_code_running_file(path, marker, wrap=lambda p: {"model": {"patch_embed.proj.weight": p}})
    with pytest.raises(ValueError, match="(?s)weights_only=True.*unsafe"):
        convert_backbone_file(str(path), str(tmp_path / "out.pth"), [SWIN])
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize(
    "tool", ["convert_swin.py", "convert_mvit.py", "convert_vit.py", "convert_regnet.py"]
)
def test_the_tools_exit_with_the_error_and_write_nothing(tmp_path, tool):
    source, target = tmp_path / "resnet.pth", tmp_path / "out.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, source)
    with pytest.raises(SystemExit) as exit:
        load_script(os.path.join("tools", tool)).main(
            ["--input", str(source), "--output", str(target)]
        )
    assert str(exit.value.code).startswith(
        f"error: {source}: this is a torchvision ResNet state dict, not a"
    )
    assert not target.exists()
