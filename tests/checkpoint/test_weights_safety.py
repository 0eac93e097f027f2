"""Weights files never run code, and files that are not checkpoints are refused clearly.

Every malicious file holds a payload whose unpickling would create a marker file (a control
shows that plain pickle.load does create it); each path that loads weights (the loader, our
checkpointer, train_net.py --eval-only and --resume, demo.py, Detectron2's DefaultPredictor)
must refuse it, name the refused global, and leave no marker behind. Legitimate model-zoo .pkl
files (numpy arrays, built here in Detectron2's layout) still load with their exact values.
"""

import os
import pickle
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor

from cli_cases import load_script
from deformable_detr.checkpoint import load_weights_file
from deformable_detr.engine import Trainer, WeightsCheckpointer
from repo_paths import QUICKSTART, REPO

# (callable, its arguments given the marker path): each creates the marker when called
PAYLOADS = {
    "os.system": lambda marker: (os.system, (f"touch {shlex.quote(marker)}",)),
    "builtins.exec": lambda marker: (exec, (f"open({marker!r}, 'w').close()",)),
    "subprocess.call": lambda marker: (subprocess.call, (["touch", marker],)),
}


class Payload:
    def __init__(self, kind, marker):
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self):
        return PAYLOADS[self.kind](self.marker)


# the refused global as each loader names it: ours as module.name (os.system is posix.system on
# Linux); torch's as "GLOBAL ...", from torch.save's protocol-2 pickle, which writes Python 2
# module names (subprocess -> commands) and builtins unqualified
REFUSED = {
    "os.system": {".pkl": "posix.system", ".pth": "GLOBAL posix.system"},
    "builtins.exec": {".pkl": "builtins.exec", ".pth": "GLOBAL exec"},
    "subprocess.call": {".pkl": "subprocess.call", ".pth": "GLOBAL commands.call"},
}


def write_malicious(path, marker, kind="os.system"):
    """A weights file in Detectron2's layout whose unpickling would create `marker`."""
    content = {
        "model": {"backbone.stem.conv1.weight": Payload(kind, marker)},
        "__author__": "attacker",
        "matching_heuristics": True,
    }
    if str(path).endswith(".pkl"):
        with open(path, "wb") as f:
            pickle.dump(content, f)
    else:
        torch.save(content, path)
    return path


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_the_payloads_run_code_when_unpickled_freely(tmp_path, kind):
    marker = tmp_path / "ran"
    with open(write_malicious(tmp_path / "evil.pkl", marker, kind), "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_the_loader_refuses_code_and_names_the_global(tmp_path, kind, suffix):
    marker = tmp_path / "ran"
    path = write_malicious(tmp_path / f"evil{suffix}", marker, kind)
    with pytest.raises(ValueError, match="refused") as error:
        load_weights_file(str(path))
    assert REFUSED[kind][suffix] in str(error.value)
    assert str(path) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("checkpointer", [WeightsCheckpointer, DetectionCheckpointer])
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_checkpointers_refuse_code(tmp_path, checkpointer, suffix):
    # DetectionCheckpointer: Detectron2's own class, made safe by `import deformable_detr`
    marker = tmp_path / "ran"
    path = write_malicious(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(ValueError, match=r"posix\.system"):
        checkpointer(torch.nn.Linear(2, 2)).load(str(path))
    assert not marker.exists()


@pytest.mark.slow
def test_train_net_eval_only_refuses_code(builtin_datasets_env, tmp_path):
    marker = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pkl", marker)
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "train_net.py"),
            "--config-file",
            QUICKSTART,
            "--eval-only",
            "MODEL.WEIGHTS",
            str(evil),
            "MODEL.DEVICE",
            "cpu",
            "OUTPUT_DIR",
            str(tmp_path / "output"),
        ],
        cwd=REPO,
        env=builtin_datasets_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert f"{evil}: refused to unpickle posix.system" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("eval_only", [False, True])
def test_resume_from_last_checkpoint_refuses_code(shapes_root, tmp_path, quick_cfg, eval_only):
    """--resume: Detectron2 loads the file that OUTPUT_DIR/last_checkpoint names, here an
    absolute path to a malicious file (train_net.py's two resume paths, run in-process)."""
    marker = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pkl", marker)
    (tmp_path / "last_checkpoint").write_text(str(evil))
    cfg = quick_cfg()
    if eval_only:
        resumer = WeightsCheckpointer(Trainer.build_model(cfg), save_dir=cfg.OUTPUT_DIR)
        args = (cfg.MODEL.WEIGHTS,)
    else:
        resumer, args = Trainer(cfg), ()
    with pytest.raises(ValueError, match=r"refused to unpickle posix\.system"):
        resumer.resume_or_load(*args, resume=True)
    assert not marker.exists()


def test_demo_refuses_code(shapes_root, builtin_datasets_env, tmp_path):
    demo = load_script("demo.py")
    marker = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pkl", marker)
    image = os.path.join(shapes_root, "ddetr_shapes_val", "images", "00000.jpg")
    with pytest.raises(ValueError, match=r"refused to unpickle posix\.system"):
        demo.main(
            ["--config-file", QUICKSTART, "--input", image, "--opts", "MODEL.WEIGHTS", str(evil)]
        )
    assert not marker.exists()


def test_detectron2_default_predictor_refuses_code(tmp_path, quick_cfg):
    marker = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pkl", marker)
    with pytest.raises(ValueError, match=r"refused to unpickle posix\.system"):
        DefaultPredictor(quick_cfg(["MODEL.WEIGHTS", str(evil)]))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_a_model_zoo_pkl_loads_its_exact_values(tmp_path, quick_cfg, protocol):
    """The layout of Detectron2's torchvision conversion (ImageNetPretrained/torchvision/R-50.pkl):
    backbone names without "backbone.", numpy arrays, matched to the model by name heuristics."""
    model = Trainer.build_model(quick_cfg())
    rng = np.random.default_rng(0)
    arrays = {
        name[len("backbone.") :]: rng.standard_normal(tuple(value.shape)).astype(np.float32)
        for name, value in model.state_dict().items()
        if name.startswith("backbone.") and not name.endswith("num_batches_tracked")
    }
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {"model": arrays, "__author__": "torchvision", "matching_heuristics": True},
            f,
            protocol=protocol,
        )
    WeightsCheckpointer(model).load(str(path))
    state = model.state_dict()
    for name, array in arrays.items():
        assert torch.equal(state[f"backbone.{name}"], torch.from_numpy(array)), name


def test_numpy_2_names_are_mapped(tmp_path):
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int64(7)}
    data = pickle.dumps({"model": weights}, protocol=2)  # protocol 2: names as text lines
    assert b"numpy.core.multiarray" in data
    path = tmp_path / "numpy2.pkl"
    path.write_bytes(data.replace(b"numpy.core.multiarray", b"numpy._core.multiarray"))
    loaded = load_weights_file(str(path))["model"]
    assert np.array_equal(loaded["w"], weights["w"]) and loaded["w"].dtype == np.float32
    assert loaded["step"] == 7 and loaded["step"].dtype == np.int64


def _damaged_pth(path):
    weight = torch.arange(64, dtype=torch.float32)
    torch.save({"model": {"weight": weight}}, path)
    data = bytearray(path.read_bytes())
    start = data.find(weight.numpy().tobytes())
    assert start > 0
    data[start + 9] ^= 0xFF  # same size, one byte of the tensor's data changed
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself would not notice
    return path


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("empty.pth", lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        ("empty.pkl", lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (
            "notes.pth",
            lambda p: p.write_text("hello weights\n"),
            r"not a PyTorch checkpoint file .*first bytes are b'hello weights\\n'",
        ),
        (
            "notes.pkl",
            lambda p: p.write_text("hello weights\n"),
            r"not a pickle file .*first bytes are b'hello weights\\n'",
        ),
        (
            "list.pkl",
            lambda p: p.write_bytes(pickle.dumps([np.zeros(2)])),
            "not a checkpoint: .*found a list of length 1",
        ),
        (
            "text.pkl",
            lambda p: p.write_bytes(pickle.dumps("weights")),
            "not a checkpoint: .*found a value of type str: 'weights'",
        ),
        ("number.pkl", lambda p: p.write_bytes(pickle.dumps(3)), "found a value of type int: 3"),
        (
            "no_arrays.pkl",
            lambda p: p.write_bytes(pickle.dumps({"model": {"w": 1.0}})),
            r"found a dict without any tensor or array \(keys: \['model'\]\)",
        ),
        ("list.pth", lambda p: torch.save([torch.zeros(2)], p), "found a list of length 1"),
        ("damaged.pth", _damaged_pth, r"member '[^']*data/0' does not match its CRC-32 checksum"),
    ],
)
def test_files_that_are_not_checkpoints_are_refused_clearly(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=message) as error:
        WeightsCheckpointer(torch.nn.Linear(8, 8)).load(str(path))
    assert str(error.value).startswith(str(path))
