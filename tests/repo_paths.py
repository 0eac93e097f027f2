"""The repository's paths, computed once from this file (tests/ itself) so that they are the same
from every test folder and moving a test never changes them."""

import os

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
CONFIG_DIR = os.path.join(REPO, "configs")
QUICKSTART = os.path.join(CONFIG_DIR, "quickstart.yaml")
# the deploy tools, relative to REPO (as cli_cases.load_script takes them)
EXPORT_TOOL = os.path.join("tools", "deploy", "export_model.py")
PREDICT_TOOL = os.path.join("tools", "deploy", "onnx_predict.py")
