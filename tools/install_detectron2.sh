#!/usr/bin/env bash
# Installs Detectron2 into the Python given as $1, unless it already imports, and timm (below).
# Detectron2 is not published on PyPI. The PyPI package sal-detectron2==0.7.2 is a wheel of
# upstream Detectron2's Python code (commit a59f0563); it is tagged for CPython 3.10 only, but
# its Python code runs on 3.11 and this project uses none of its compiled ops, so we fetch it
# for 3.10, retag it as pure Python and install it without dependencies (requirements.txt
# carries those).
set -euo pipefail
py=${1:-python}
# Detectron2's Swin, ViT and MViT backbones import DropPath and Mlp from timm, which is on PyPI.
# Without its dependencies: they serve timm's model hub (huggingface_hub and a dozen packages),
# which those layers never touch.
"$py" -m pip install --quiet --no-deps timm==1.0.31
if "$py" -c "import detectron2" 2>/dev/null; then
  echo "detectron2 already importable: $("$py" -c 'import detectron2; print(detectron2.__file__)')"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --no-deps --only-binary=:all: --python-version 3.10 \
  sal-detectron2==0.7.2 -d "$tmp"
whl=$(ls "$tmp"/sal_detectron2-0.7.2-*.whl)
mv "$whl" "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
"$py" -m pip install --no-deps "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
"$py" -c "import detectron2; print('detectron2', detectron2.__version__, 'installed')"
