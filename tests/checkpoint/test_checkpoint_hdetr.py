"""H-Deformable-DETR's R50 checkpoints (HDETR/H-Deformable-DETR) convert like the authors'
(deformable_detr.checkpoint.official_layout and hdetr_layout, tools/convert_official_checkpoint.py).

Fake files are rebuilt from their run's args as their build(args) makes the model
(checkpoint_cases.hdetr_tree: FFN width 2048, the learned content queries of mixed query
selection, Q_1 + Q_2 rows), with the args their main.py stores, independently of the converter's
table. Each release converts, loads with no missing, unexpected or misshapen key into the model of
the config (and keys) the converter names, and keeps every tensor; the config and keys reproduce
the run's settings, also for runs of theirs that are not releases; args that disagree with the
weights are refused. Their one-to-many queries own no weight but their rows of query_embed: no
name of their state dict has "one2many" (their models/deformable_detr.py: only the loss names).
"""

import runpy

import pytest
import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from checkpoint_cases import (
    HDETR_RELEASES,
    RecordingCheckpointer,
    released_args,
    released_checkpoint,
    released_meta_state_dict,
    released_shapes,
)
from deformable_detr.checkpoint import (
    HDETR_VARIANTS,
    convert_official_state_dict,
    detect_variant,
    official_to_detectron2_name,
    released_layout,
    save_detectron2_checkpoint,
)
from deformable_detr.checkpoint.hdetr_layout import CONFIG_SETTINGS, KEYS
from model_cases import build, model_cfg
from repo_paths import REPO

VARIANTS = {v.name: v for v in HDETR_VARIANTS}
COCO_IDS = [c["id"] for c in COCO_CATEGORIES if c["isthing"]]  # our class j -> category id
D, H = "MODEL.DEFORMABLE_DETR.", "MODEL.DEFORMABLE_DETR.HYBRID_MATCHING."
# their published COCO val box AP: name -> (12-epoch config, 36-epoch config, AP 12, AP 36)
PUBLISHED = {
    "hdetr_baseline": ("ddetr_r50_two_stage.yaml", "ddetr_r50_two_stage.yaml", 43.7, 46.8),
    "hdetr_tricks": ("ddetr_r50_plus_12ep.yaml", "ddetr_r50_plus_36ep.yaml", 47.0, 49.0),
    "hdetr_hybrid": ("hdetr_r50_12ep.yaml", "hdetr_r50_36ep.yaml", 48.7, 50.0),
}


def _config_value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _assert_config_is_the_run(variant, args):
    """The config and keys the converter names set every setting of the run as its args do
    (K and lambda only with one-to-many queries, where they act)."""
    cfg = model_cfg(variant.config, variant.opts)
    for field, key in KEYS.items():
        if field in ("k_one2many", "lambda_one2many") and not args.num_queries_one2many:
            continue
        assert _config_value(cfg, key) == getattr(args, field), key


def _load_exactly(source, variant, tmp_path):
    """The converted file loaded into the model of the named config and keys: our state dict."""
    path = tmp_path / "converted.pth"
    converted = convert_official_state_dict(source["model"], variant)
    save_detectron2_checkpoint(str(path), converted, author="test")
    checkpointer = RecordingCheckpointer(build(variant.config, variant.opts))
    checkpointer.load(str(path))
    incompatible = checkpointer.incompatible
    assert incompatible.missing_keys == incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    return checkpointer.model.state_dict()


def _assert_every_tensor_lands(ours, theirs):
    mapped = set()
    for key, value in theirs.items():
        new = official_to_detectron2_name(key)
        if new is None:  # the decoder's aliases of the heads
            continue
        mapped.add(new)
        if key.startswith("class_embed."):  # 91 rows by category id -> 80; the proposal head: kept
            value = value[COCO_IDS] if int(key.split(".")[1]) < 6 else value[:80]
        assert torch.equal(ours[new], value), key
    assert mapped == set(ours)


@pytest.mark.parametrize("name", list(HDETR_RELEASES))
def test_layout_matches_their_module_tree(name):
    assert released_layout(VARIANTS[name]) == dict(released_shapes(name))
    assert not [key for key in released_shapes(name) if "one2many" in key]


@pytest.mark.parametrize("name", list(HDETR_RELEASES))
def test_each_release_converts_and_loads_exactly_into_the_named_config(name, tmp_path):
    source = released_checkpoint(name)
    variant = detect_variant(source["model"], source["args"])
    assert variant == VARIANTS[name]
    config, _, box_ap, _ = PUBLISHED[name]
    assert (variant.config, variant.box_ap, variant.epochs) == (config, box_ap, 12)
    assert variant.source == "HDETR/H-Deformable-DETR"
    # their baseline is the authors' two-stage model with a wider FFN: one key says so
    expected_opts = (D + "DIM_FEEDFORWARD", "2048") if name == "hdetr_baseline" else ()
    assert variant.opts == expected_opts
    _assert_config_is_the_run(variant, source["args"])

    ours, theirs = _load_exactly(source, variant, tmp_path), source["model"]
    _assert_every_tensor_lands(ours, theirs)
    if "query_embed.weight" in theirs:  # the content queries: 300 (+ 1,500) rows, in order
        assert ours["query_embed.weight"].shape == (300 + (1500 if "hybrid" in name else 0), 256)
        assert torch.equal(ours["query_embed.weight"], theirs["query_embed.weight"])
    else:
        assert "query_embed.weight" not in ours
    # our class 0 (person) is their row 1, our class 79 (toothbrush) their row 90
    assert (ours["class_embed.5.weight"][[0, 79]][:, 0] == torch.tensor([5001.0, 5090.0])).all()


@pytest.mark.parametrize("name", list(HDETR_RELEASES))
def test_their_36_epoch_files_name_the_36_epoch_config_and_ap(name):
    args = released_args(name, epochs=36, lr_drop=30)
    variant = detect_variant(released_meta_state_dict(name), args)
    _, config, _, box_ap = PUBLISHED[name]
    assert (variant.name, variant.config, variant.box_ap, variant.epochs) == (
        name,
        config,
        box_ap,
        36,
    )
    _assert_config_is_the_run(variant, args)
    # the same model as the 12-epoch config's: only the schedule differs
    assert model_cfg(config).MODEL == model_cfg(PUBLISHED[name][0]).MODEL


@pytest.mark.parametrize("name", list(HDETR_RELEASES))
def test_without_args_the_weights_name_the_release_but_no_ap(name):
    variant = detect_variant(released_meta_state_dict(name))
    assert (variant.name, variant.config, variant.opts) == (
        name,
        VARIANTS[name].config,
        VARIANTS[name].opts,
    )
    assert variant.box_ap is None and variant.epochs is None  # which run, the file does not say
    assert variant.published == ((12, PUBLISHED[name][2]), (36, PUBLISHED[name][3]))


@pytest.mark.parametrize(
    "name, run, keys",
    [
        # their ablations (configs/two_stage/*/12eps/r50_*.sh), none released
        ("hdetr_hybrid", dict(num_queries_one2many=900, k_one2many=3), (H + "NUM_QUERIES_ONE2MANY", "900", H + "K_ONE2MANY", "3")),  # noqa: E501
        ("hdetr_hybrid", dict(lambda_one2many=0.5), (H + "LAMBDA_ONE2MANY", "0.5")),
        ("hdetr_baseline", dict(num_queries_one2one=1800), (D + "DIM_FEEDFORWARD", "2048", D + "TWO_STAGE_NUM_PROPOSALS", "1800")),  # noqa: E501
        # hybrid matching without the tricks: no content queries, the baseline's weights
        ("hdetr_baseline", dict(num_queries_one2many=1500, k_one2many=6), (D + "DIM_FEEDFORWARD", "2048", H + "NUM_QUERIES_ONE2MANY", "1500")),  # noqa: E501
        ("hdetr_tricks", dict(look_forward_twice=False), (D + "LOOK_FORWARD_TWICE", "False")),
        ("hdetr_tricks", dict(epochs=24, lr_drop=20), ()),
    ],
)  # fmt: skip
def test_other_runs_of_theirs_get_the_keys_they_need_and_no_ap(name, run, keys):
    args = released_args(name, **run)
    variant = detect_variant(released_meta_state_dict(name, **run), args)
    assert (variant.name, variant.config, variant.opts) == (name, PUBLISHED[name][0], keys)
    assert variant.box_ap is None
    _assert_config_is_the_run(variant, args)


def test_a_query_count_of_no_config_loads_with_the_key_the_converter_names(tmp_path):
    # 300 + 900 content queries (their group3_t900 run), without args: Q_1 = 300 is assumed
    source = released_checkpoint("hdetr_hybrid", with_args=False, num_queries_one2many=900)
    variant = detect_variant(source["model"])
    assert variant.name == "hdetr_hybrid" and variant.content_queries == 1200
    assert variant.opts == (H + "NUM_QUERIES_ONE2MANY", "900")
    ours = _load_exactly(source, variant, tmp_path)
    assert torch.equal(ours["query_embed.weight"], source["model"]["query_embed.weight"])


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("hdetr_hybrid", dict(num_queries_one2many=900), "args say content_queries=1200 but the weights say content_queries=1800"),  # noqa: E501
        ("hdetr_tricks", dict(mixed_selection=False), "content_queries=0 but the weights say content_queries=300"),  # noqa: E501
        ("hdetr_baseline", dict(mixed_selection=True), "content_queries=300 but the weights say content_queries=0"),  # noqa: E501
        ("hdetr_baseline", dict(dim_feedforward=1024), "dim_feedforward=1024 but the weights say dim_feedforward=2048"),  # noqa: E501
        ("hdetr_hybrid", dict(two_stage=False), "two_stage=False but the weights say two_stage=True"),  # noqa: E501
        ("hdetr_tricks", dict(backbone="swin_tiny"), "'swin_tiny': only their ResNet-50 files"),
    ],
)  # fmt: skip
def test_args_that_disagree_with_the_weights_are_refused(name, args, message):
    with pytest.raises(ValueError, match=message):
        detect_variant(released_meta_state_dict(name), released_args(name, **args))


def test_their_other_models_and_a_disagreeing_variant_flag_are_refused():
    weights = released_meta_state_dict("hdetr_tricks")
    with pytest.raises(
        ValueError, match="given, but the checkpoint is H-Deformable-DETR's 'hdetr_tricks'"
    ):  # noqa: E501
        detect_variant(weights, released_args("hdetr_tricks"), variant="hdetr_hybrid")
    with pytest.raises(ValueError, match="'hdetr_baseline' has dim_feedforward=2048, but"):
        detect_variant(released_meta_state_dict("two_stage"), variant="hdetr_baseline")
    # a Swin backbone in place of the ResNet-50 (their Swin files)
    swin = {k: v for k, v in weights.items() if not k.startswith("backbone.")}
    swin["backbone.0.body.patch_embed.proj.weight"] = torch.empty(96, 3, 4, 4, device="meta")
    with pytest.raises(ValueError, match="is not a ResNet-50, it has no conv1"):
        detect_variant(swin)
    # a one-stage model of theirs (the authors' box_refine layout, their args)
    one_stage = released_args("hdetr_baseline", two_stage=False, dim_feedforward=1024)
    with pytest.raises(ValueError, match="read for two-stage models with box refinement"):
        detect_variant(released_meta_state_dict("box_refine"), one_stage)


def test_the_configs_set_what_the_converter_assumes():
    for config, settings in CONFIG_SETTINGS.items():
        cfg = model_cfg(config)
        assert {f: _config_value(cfg, key) for f, key in KEYS.items()} == settings, config


@pytest.mark.parametrize(
    "name, run, lines",
    [
        (
            "hdetr_hybrid",
            dict(epochs=36, lr_drop=30),
            [
                "variant: hdetr_hybrid of HDETR/H-Deformable-DETR (their COCO val box AP 50.0, "
                "36 epochs)",
                "config: configs/hdetr_r50_36ep.yaml",
            ],
        ),
        (
            "hdetr_baseline",
            dict(num_queries_one2one=1800),
            [
                "variant: hdetr_baseline of HDETR/H-Deformable-DETR (no published AP for this very "
                "run: its stored args differ from the release's, or are absent; the release's: "
                "43.7 at 12 epochs, 46.8 at 36 epochs)",
                f"config: configs/ddetr_r50_two_stage.yaml {D}DIM_FEEDFORWARD 2048 "
                f"{D}TWO_STAGE_NUM_PROPOSALS 1800",
            ],
        ),
    ],
)
def test_the_script_prints_the_variant_the_config_and_its_keys(name, run, lines, tmp_path, capsys):
    path, output = tmp_path / "hdetr.pth", tmp_path / "out.pth"
    torch.save(released_checkpoint(name, **run), path)
    script = runpy.run_path(f"{REPO}/tools/convert_official_checkpoint.py")
    script["main"](["--input", str(path), "--output", str(output)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == lines[0] and printed[2] == lines[1]
    _, config, *keys = lines[1].split()
    evaluate = ["--config-file", config, "--eval-only", "MODEL.WEIGHTS", str(output), *keys]
    assert printed[3].endswith(" ".join(evaluate))
    model = build(config.split("/")[1], keys)
    assert set(torch.load(output, weights_only=True)["model"]) == set(model.state_dict())
