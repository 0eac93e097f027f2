"""H-Deformable-DETR's R50 checkpoints (HDETR/H-Deformable-DETR) convert like the authors': files
rebuilt in their layout from their module tree (checkpoint_cases.HDETR_RELEASES: FFN width 2048,
the learned content queries of mixed query selection, 300 + 1,500 rows with hybrid matching),
with the args their main.py stores. Their one-to-many queries own no other weight: there is no
"_one2many" name in their model's state dict (read from their models/deformable_detr.py)."""

import pytest
import torch

from checkpoint_cases import (
    HDETR_RELEASES,
    RecordingCheckpointer,
    released_args,
    released_checkpoint,
    released_shapes,
    run_tool,
)
from deformable_detr.checkpoint import (
    HDETR_VARIANTS,
    convert_official_state_dict,
    detect_variant,
    released_layout,
    save_detectron2_checkpoint,
)
from model_cases import build

VARIANTS = {v.name: v for v in HDETR_VARIANTS}


@pytest.mark.parametrize("name", list(HDETR_RELEASES))
def test_layout_matches_their_module_tree(name):
    assert released_layout(VARIANTS[name]) == dict(released_shapes(name))


@pytest.mark.parametrize("name", list(HDETR_RELEASES))
def test_converted_file_loads_exactly_into_the_named_config(name, tmp_path):
    source = released_checkpoint(name)
    variant = detect_variant(source["model"], source["args"])
    assert variant.name == name and variant.source == "HDETR/H-Deformable-DETR"
    # without args too: the weights alone tell these three apart
    assert detect_variant(source["model"]) == variant
    converted = tmp_path / "converted.pth"
    save_detectron2_checkpoint(
        str(converted), convert_official_state_dict(source["model"], variant), author="test"
    )
    model = build(variant.config, variant.opts)
    checkpointer = RecordingCheckpointer(model)
    checkpointer.load(str(converted))
    incompatible = checkpointer.incompatible
    assert incompatible.missing_keys == incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    ours, theirs = model.state_dict(), source["model"]
    for key in ("transformer.encoder.layers.0.linear1.weight", "transformer.pos_trans.weight"):
        assert torch.equal(ours[key], theirs[key])
    if variant.content_queries:
        assert torch.equal(ours["query_embed.weight"], theirs["query_embed.weight"])
    else:
        assert "query_embed.weight" not in ours


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("hdetr_hybrid", dict(num_queries_one2many=900), "content_queries"),
        ("hdetr_tricks", dict(mixed_selection=False), "content_queries"),
        ("hdetr_baseline", dict(dim_feedforward=1024), "dim_feedforward"),
    ],
)
def test_args_that_disagree_with_the_weights_are_refused(name, override, message):
    source = released_checkpoint(name, with_args=False)
    with pytest.raises(ValueError, match=message):
        detect_variant(source["model"], released_args(name, **override))


def test_a_query_count_of_no_release_is_refused():
    source = released_checkpoint("hdetr_hybrid", with_args=False)
    source["model"]["query_embed.weight"] = torch.zeros(1200, 256)  # their 900-query runs
    with pytest.raises(ValueError, match="no released variant has .*'content_queries': 1200"):
        detect_variant(source["model"])


def test_the_script_prints_the_config_and_its_keys(tmp_path):
    source = released_checkpoint("hdetr_baseline")
    path = tmp_path / "hdetr.pth"
    torch.save(source, path)
    result = run_tool(
        "convert_official_checkpoint.py",
        "--input",
        str(path),
        "--output",
        str(tmp_path / "out.pth"),
    )
    assert result.returncode == 0, result.stderr
    assert "variant: hdetr_baseline" in result.stdout
    config = "configs/ddetr_r50_two_stage.yaml MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD 2048"
    assert f"config: {config}\n" in result.stdout
