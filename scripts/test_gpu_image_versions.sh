#!/usr/bin/env bash
# Run the test suite (storage aside: it uses no torch) on the CPU under the GPU image's versions of torch and
# transformers, before spending device time: the GPU machine runs our code under its own python3 and packages
# (torch 2.11, transformers 5.17, triton 3.6, no Hugging Face `kernels` package; /work/.library/device/KINDS.md),
# not under constraints.txt. Builds .venv-gpu-image once (git-ignored; torch 2.11 is a 530 MB download).
#
#     bash scripts/test_gpu_image_versions.sh            # then the slow qwen + spiking tests: add --slow
#
# Triton stays at 3.8 here: triton 3.6's interpreter cannot run the LIF kernel's loops over scalar tensors
# (`range(tl.maximum(...), ...)`); compiling for sm_90 with triton 3.6 is checked by tests/kernels/sm90.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-gpu-image
if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
    # torch's CUDA build without its nvidia-* libraries (GBs; nothing here calls CUDA), then the rest
    "$VENV/bin/pip" install -q --no-deps torch==2.11.0
    "$VENV/bin/pip" install -q typing_extensions sympy networkx jinja2 fsspec filelock
    printf "torch==2.11.0\ntransformers==5.17.0\n" >"$VENV/pins.txt"
    "$VENV/bin/pip" install -q -c "$VENV/pins.txt" -e ".[dev,kernels,model,embed,viz,server,mcp]"
    # torch 2.11 asks for triton 3.6; the interpreter tests need 3.8 (see above)
    "$VENV/bin/pip" install -q triton==3.8.0 einops 2>&1 | grep -v "dependency conflicts\|requires triton" || true
fi
"$VENV/bin/python" -c "import torch, transformers, triton; print('torch', torch.__version__, '| transformers', transformers.__version__, '| triton', triton.__version__)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests -m "not slow" --deselect tests/storage
if [[ ${1:-} == --slow ]]; then
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/qwen tests/spiking -m slow
fi
