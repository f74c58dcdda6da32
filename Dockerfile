# megatron-rw on NVIDIA's PyTorch container (CUDA, NCCL, torch, apex, Transformer Engine).
#   docker build -t megatron-rw .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v "$PWD/data:/workspace/megatron-rw/data" -v "$PWD/runs:/workspace/megatron-rw/runs" \
#       megatron-rw --train-iters 2000
#   That is Megatron's own training loop (megatron-core's megatron.training) with the reweighted
#   loss. Your own Megatron-LM checkout's pretrain_gpt.py instead (through patches/megatron_lm):
#       docker run ... -v /path/to/Megatron-LM:/megatron-lm -e MEGATRON_LM=/megatron-lm megatron-rw
# BASE_IMAGE can be any image with Python >= 3.12 and torch >= 2.6 (megatron-core 0.19's
# requirements). `make docker-test` builds this file on a local Debian base with PyPI's torch and
# runs it on CPUs (scripts/docker_test.sh); the NGC default and GPUs are not tried there.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.04-py3
FROM ${BASE_IMAGE}

# megatron-core 0.17+ needs Python 3.12; fail the build here rather than at the first import.
RUN python -c "import sys; assert sys.version_info >= (3, 12), sys.version"
# --no-deps: keep the container's own torch build (pip would otherwise try to replace it).
# numpy and packaging: megatron-core's other requirements, which NGC's image has and a plain
# Python + torch base does not (pip leaves an installed numpy as it is).
# pyyaml, psutil, six, regex, pydantic: a Megatron-LM checkout's megatron.training imports them;
# pybind11 builds its dataset helpers; tensorboard: Megatron's --tensorboard-dir (the launcher
# passes one; NGC's image has it).
RUN pip install --no-cache-dir --no-deps megatron-core==0.19.2 sentencepiece==0.2.3 \
    && pip install --no-cache-dir numpy "packaging>=24.2" pyyaml psutil six regex pydantic pybind11 \
        tensorboard

# Megatron's training loop warms up its fused kernels with torch.compile, which on a CPU needs a
# C++ compiler and openssl (inductor hashes its precompiled header with it; the compiler also
# builds the dataset helpers where a wheel lacks them). NGC's image has both, a plain Debian base
# neither.
RUN (command -v g++ && command -v openssl) >/dev/null || (apt-get update \
    && apt-get install -y --no-install-recommends g++ openssl && rm -rf /var/lib/apt/lists/*)
WORKDIR /workspace/megatron-rw
COPY pyproject.toml README.md LICENSE CHANGELOG.md ./
COPY megatron_rw ./megatron_rw
COPY examples ./examples
COPY patches ./patches
RUN pip install --no-cache-dir --no-deps -e .

ENV PYTHON=python
ENTRYPOINT ["bash", "examples/pretrain_gpt_rw.sh"]
