"""Tests of the converter of the released Deformable DETR checkpoints
(deformable_detr.checkpoint.official, tools/convert_official_checkpoint.py).

Fake checkpoints in the exact released layout (checkpoint_cases.py, random values) are converted,
loaded into the model of each variant's config with no missing, unexpected or misshapen key, and
run; every tensor is traced back to its source, the class rows to their category ids. Bad files
are refused with a message naming the problem, and nothing but tensors, containers and the
stored args is ever unpickled.
"""

import runpy

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from checkpoint_cases import (
    HEAD_OFFSET,
    RELEASES,
    RecordingCheckpointer,
    assert_bad_file_refused,
    released_args,
    released_checkpoint,
    released_meta_state_dict,
    released_shapes,
    run_tool,
    write_code_running_file,
)
from deformable_detr.checkpoint import (
    RELEASED_VARIANTS,
    coco_category_ids,
    convert_official_checkpoint,
    convert_official_state_dict,
    detect_variant,
    load_official_checkpoint,
    official_to_detectron2_name,
    released_layout,
    save_detectron2_checkpoint,
)
from model_cases import build, image
from repo_paths import REPO

COCO_IDS = [c["id"] for c in COCO_CATEGORIES if c["isthing"]]  # our class j -> category id
VARIANTS = {v.name: v for v in RELEASED_VARIANTS}
ALIASES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")


def _assert_loads_exactly(model, path):
    checkpointer = RecordingCheckpointer(model)
    extra = checkpointer.load(str(path))
    incompatible = checkpointer.incompatible
    assert incompatible.missing_keys == []
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    assert "optimizer" not in extra and "lr_scheduler" not in extra and "args" not in extra


@pytest.mark.parametrize("name", list(RELEASES))
def test_released_layout_matches_the_authors_module_tree(name):
    assert released_layout(VARIANTS[name]) == dict(released_shapes(name))


def test_coco_category_ids_are_detectron2s_contiguous_order():
    ids = coco_category_ids()
    assert ids == COCO_IDS and len(ids) == 80 and ids[0] == 1 and ids[-1] == 90


@pytest.mark.parametrize("name", list(RELEASES))
def test_converted_checkpoint_loads_exactly_keeps_every_tensor_and_runs(name, tmp_path):
    # in memory (reading the released file is covered by the script test and the bad-file tests)
    source, converted = released_checkpoint(name), tmp_path / "converted.pth"
    variant = detect_variant(source["model"], source["args"])
    assert variant.name == name and variant.config == RELEASES[name][1]
    state_dict = convert_official_state_dict(source["model"], variant)
    save_detectron2_checkpoint(str(converted), state_dict, author="test")

    model = build(variant.config)
    _assert_loads_exactly(model, converted)

    ours, weights = model.state_dict(), source["model"]
    mapped = set()
    for key, value in weights.items():
        new = official_to_detectron2_name(key)
        if new is None:
            assert key.startswith(ALIASES), key
            continue
        mapped.add(new)
        if not new.startswith("class_embed."):
            assert torch.equal(ours[new], value), key
    assert mapped == set(ours)

    refine, two_stage = RELEASES[name][0]["with_box_refine"], RELEASES[name][0]["two_stage"]
    for head in range(6):
        offset = head * HEAD_OFFSET if refine else 0.0
        for leaf in ("weight", "bias"):
            rows = ours[f"class_embed.{head}.{leaf}"]
            assert torch.equal(rows, weights[f"class_embed.{head}.{leaf}"][COCO_IDS])
        weight = ours[f"class_embed.{head}.weight"]
        assert (weight[0] == 1 + offset).all() and (weight[79] == 90 + offset).all()
    if two_stage:  # the proposal head keeps its rows: row 0 stays row 0
        for leaf in ("weight", "bias"):
            assert torch.equal(ours[f"class_embed.6.{leaf}"], weights[f"class_embed.6.{leaf}"][:80])
        assert (ours["class_embed.6.weight"][0] == 6 * HEAD_OFFSET).all()

    model.eval()
    with torch.no_grad():
        [result] = model([{"image": image(64, 96, 0)}])
    instances = result["instances"]
    assert len(instances) == 100
    assert torch.isfinite(instances.scores).all()
    assert torch.isfinite(instances.pred_boxes.tensor).all()


def test_script_converts_with_the_variant_flag_and_prints_the_config(tmp_path):
    released, converted = tmp_path / "released.pth", tmp_path / "converted.pth"
    torch.save(released_checkpoint("single_scale_dc5", with_args=False), released)
    script = runpy.run_path(f"{REPO}/tools/convert_official_checkpoint.py")
    with pytest.raises(SystemExit, match="--variant"):  # DC5 cannot be seen in the weights
        script["main"](["--input", str(released), "--output", str(converted)])
    assert not converted.exists()

    done = run_tool(
        "convert_official_checkpoint.py",
        "--input",
        released,
        "--output",
        converted,
        "--variant",
        "single_scale_dc5",
    )
    assert done.returncode == 0, done.stderr
    assert "configs/ddetr_r50_single_scale_dc5.yaml" in done.stdout
    checkpoint = torch.load(converted, weights_only=True)
    assert set(checkpoint) == {"model", "__author__", "matching_heuristics", "class_names"}
    # the 80 rows' classes, for fine-tuning by class name
    assert checkpoint["class_names"] == MetadataCatalog.get("coco_2017_val").thing_classes
    assert checkpoint["matching_heuristics"] is False
    assert set(checkpoint["model"]) == set(build("ddetr_r50_single_scale_dc5.yaml").state_dict())


@pytest.mark.parametrize("name", list(RELEASES))
def test_variant_is_detected_from_the_keys_and_the_args(name):
    weights, args = released_meta_state_dict(name), released_args(name)
    assert detect_variant(weights, args).name == name
    assert detect_variant(weights, vars(args)).name == name
    assert detect_variant(weights, args, variant=name).name == name
    if name.startswith("single_scale"):
        with pytest.raises(ValueError, match="single-scale DC5.*--variant"):
            detect_variant(weights)
        assert detect_variant(weights, variant=name).name == name
    else:
        assert detect_variant(weights).name == name


@pytest.mark.parametrize(
    "name, args, variant, message",
    [
        ("multi_scale", dict(two_stage=True), None, "args say two_stage=True but the weights say"),
        ("single_scale", dict(num_feature_levels=4), None, "args say num_feature_levels=4"),
        ("multi_scale", dict(dilation=True), None, "no released variant has"),
        ("multi_scale", None, "box_refine", "variant 'box_refine' has with_box_refine=True"),
        ("single_scale", dict(dilation=False), "single_scale_dc5", "has dilation=True"),
        ("multi_scale", None, "r101", "variant must be one of"),
    ],
)
def test_variant_disagreements_are_refused(name, args, variant, message):
    stored = None if args is None else released_args(name, **args)
    with pytest.raises(ValueError, match=message):
        detect_variant(released_meta_state_dict(name), stored, variant)


def _without(weights, key):
    del weights[key]
    return weights


def _with(weights, key, value):
    weights[key] = value
    return weights


@pytest.mark.parametrize(
    "content, message",
    [
        ([torch.zeros(2)], "expected a dict with 'model', got list"),
        ({"state_dict": {}, "epoch": 3}, "has no 'model' entry"),
        ({"model": [torch.zeros(2)]}, "'model' must be a state dict"),
        (
            {"model": {"head.weight": torch.zeros(2)}},
            "neither transformer.level_embed nor input_proj",
        ),
        (
            {
                "model": _without(
                    released_meta_state_dict("multi_scale"),
                    "transformer.encoder.layers.3.norm2.bias",
                )
            },
            "1 missing key.*: transformer.encoder.layers.3.norm2.bias",
        ),
        (
            {
                "model": _with(
                    released_meta_state_dict("two_stage"),
                    "transformer.extra.weight",
                    torch.zeros(1),
                )
            },
            "1 unknown key.*: transformer.extra.weight",
        ),
        (
            {
                "model": _with(
                    released_meta_state_dict("box_refine"),
                    "query_embed.weight",
                    torch.empty(300, 256, device="meta"),
                )
            },
            r"1 wrong shape.*: query_embed.weight expected \(300, 512\), got \(300, 256\)",
        ),
        (
            {
                "model": _with(
                    released_meta_state_dict("multi_scale"),
                    "class_embed.2.bias",
                    torch.empty(80, device="meta"),
                )
            },
            r"class_embed.2.bias expected \(91,\), got \(80,\)",
        ),
    ],
)
def test_bad_files_are_refused_with_their_problem(tmp_path, content, message):
    assert_bad_file_refused(convert_official_checkpoint, tmp_path, content, message)


def test_a_file_that_is_not_a_torch_file_is_refused(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint file"):
        load_official_checkpoint(str(path))


@pytest.mark.parametrize(
    "key, source",
    [
        ("class_embed.3.bias", "class_embed.0.bias"),  # shared heads are equal copies
        ("bbox_embed.5.layers.2.weight", "bbox_embed.0.layers.2.weight"),
    ],
)
def test_shared_head_copies_that_differ_are_refused(key, source):
    weights = {k: torch.zeros(v.shape) for k, v in released_meta_state_dict("multi_scale").items()}
    weights[key] = weights[key] + 1
    with pytest.raises(ValueError, match=f"{key} differs from {source}"):
        convert_official_state_dict(weights, VARIANTS["multi_scale"])


def test_profiler_counters_are_dropped():
    # thop adds these buffers to every module it profiles; the authors' main.py ignores them
    weights = {k: torch.zeros(v.shape) for k, v in released_meta_state_dict("multi_scale").items()}
    weights.update(
        {"total_ops": torch.zeros(1), "transformer.encoder.total_params": torch.zeros(1)}
    )
    converted = convert_official_state_dict(weights, VARIANTS["multi_scale"])
    assert not any(k.endswith(("total_ops", "total_params")) for k in converted)


def test_aliases_that_differ_from_their_heads_are_refused():
    weights = {k: torch.zeros(v.shape) for k, v in released_meta_state_dict("two_stage").items()}
    weights["transformer.decoder.class_embed.6.bias"] = torch.ones(91)
    with pytest.raises(ValueError, match="decoder.class_embed.6.bias differs from class_embed.6"):
        convert_official_state_dict(weights, VARIANTS["two_stage"])


def test_code_in_the_file_is_refused_and_never_run(tmp_path):
    marker, path = tmp_path / "code_ran", tmp_path / "payload.pth"
    write_code_running_file(path, marker)
    with pytest.raises(ValueError, match="(?s)weights_only=True.*unsafe"):
        convert_official_checkpoint(str(path), str(tmp_path / "out.pth"))
    assert not marker.exists()

    # control: the same payload does run when unpickled without the allow-list
    control_marker, control = tmp_path / "control_ran", tmp_path / "control.pth"
    write_code_running_file(control, control_marker)
    torch.load(control, weights_only=False)
    assert control_marker.exists()


def test_legacy_format_files_with_args_load(tmp_path):
    # the released files were written by PyTorch 1.5/1.6, possibly in the pre-zip format
    path = tmp_path / "legacy.pth"
    torch.save(
        {
            "model": {"transformer.level_embed": torch.zeros(4, 256)},
            "epoch": 49,
            "args": released_args("two_stage"),
        },
        path,
        _use_new_zipfile_serialization=False,
    )
    checkpoint = load_official_checkpoint(str(path))
    assert checkpoint["args"].two_stage is True and checkpoint["args"].lr_drop_epochs is None
