#!/usr/bin/env bash
# GPT pretraining with loss-based sample reweighting, launched with torchrun on this node.
#
#   bash examples/pretrain_gpt_rw.sh [pretrain_gpt flags ...]
#   MEGATRON_LM=/path/to/Megatron-LM bash examples/pretrain_gpt_rw.sh [pretrain_gpt.py flags ...]
#
# Without MEGATRON_LM it trains with megatron-rw's own entry point (python -m
# megatron_rw.pretrain_gpt); with it, that checkout's unmodified pretrain_gpt.py through
# patches/megatron_lm/pretrain_gpt_rw.py. The config's flags and the corpus's flags are
# Megatron-LM's names, so the same CONFIG and DATA serve both.
#
# Run it once per node (by hand, or from examples/slurm/pretrain_gpt_rw.sbatch). Flags given on
# the command line come last, so they override the config's (argparse keeps the last value):
#   bash examples/pretrain_gpt_rw.sh --sample-reweight-strategy quadratic --train-iters 500
#
# Environment, with defaults:
#   GPUS_PER_NODE  processes on this node      all visible GPUs; 2 on a machine without CUDA
#   NNODES         nodes in the job            $SLURM_NNODES or 1
#   NODE_RANK      this node's index           $SLURM_NODEID or 0
#   MASTER_ADDR    rendezvous host             first host of $SLURM_JOB_NODELIST, else 127.0.0.1
#   MASTER_PORT    rendezvous port             6000
#   CONFIG         model and training flags    examples/configs/tiny_cpu.sh without CUDA,
#                                              examples/configs/gpt_125m.sh with it
#   DATA           corpus from megatron_rw.data.prepare (its manifest gives tokenizer and blends)
#                                              data/small; set DATA= to pass your own
#                                              --data-path and --tokenizer-model flags instead
#   OUT            checkpoints, metrics.jsonl, TensorBoard   runs/<config name>
#   PYTHON         interpreter with megatron-rw installed    python3
#   MEGATRON_LM    a Megatron-LM checkout to train with      unset: megatron-rw's entry point
# With CUDA: NCCL and --bf16 (BF16=0 to train in fp32). Without: gloo and the CPU runtime, and
# OMP_NUM_THREADS = cores / processes unless set; with MEGATRON_LM also megatron_rw.megatron_lm_cpu
# (Megatron-LM's training loop on a CPU) and the flags it needs there (--transformer-impl local,
# --distributed-backend gloo, ...).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"

if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    HAS_CUDA=1
    GPUS_PER_NODE="${GPUS_PER_NODE:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}"
    CONFIG="${CONFIG:-$HERE/configs/gpt_125m.sh}"
else
    HAS_CUDA=0
    GPUS_PER_NODE="${GPUS_PER_NODE:-2}"
    CONFIG="${CONFIG:-$HERE/configs/tiny_cpu.sh}"
    # One thread per core: more threads than cores makes gloo ranks starve each other.
    # megatron-core warns, once per rank and import, that the CUDA-only fused kernels are absent.
    export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore:Transformer Engine and Apex are not installed::,ignore:Apex is not installed::,ignore:full scope is deprecated::}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / GPUS_PER_NODE > 0 ? $(nproc) / GPUS_PER_NODE : 1 ))}"
fi

NNODES="${NNODES:-${SLURM_NNODES:-1}}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
if [[ -z "${MASTER_ADDR:-}" ]]; then
    if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null; then
        MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
    else
        MASTER_ADDR=127.0.0.1
    fi
fi
MASTER_PORT="${MASTER_PORT:-6000}"

if [[ ! -f "$CONFIG" ]]; then
    echo "pretrain_gpt_rw.sh: CONFIG=$CONFIG does not exist (see examples/configs/)" >&2
    exit 2
fi
# The config defines the MODEL_ARGS, TRAIN_ARGS and REWEIGHT_ARGS arrays.
source "$CONFIG"
CONFIG_NAME="$(basename "$CONFIG" .sh)"
OUT="${OUT:-runs/$CONFIG_NAME}"

DATA_ARGS=()
DATA="${DATA-data/small}"
if [[ -n "$DATA" ]]; then
    mapfile -t DATA_ARGS < <(PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m megatron_rw.data.flags "$DATA")
    [[ ${#DATA_ARGS[@]} -gt 0 ]] || exit 2  # the error is already printed
fi

PRECISION_ARGS=()
if [[ "$HAS_CUDA" == 1 && "${BF16:-1}" == 1 ]]; then
    PRECISION_ARGS=(--bf16)
fi

PYPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${MEGATRON_LM:-}" ]]; then
    if [[ ! -f "$MEGATRON_LM/pretrain_gpt.py" ]]; then
        echo "pretrain_gpt_rw.sh: MEGATRON_LM=$MEGATRON_LM has no pretrain_gpt.py" >&2
        exit 2
    fi
    MEGATRON_LM="$(cd "$MEGATRON_LM" && pwd)"
    # The checkout first: its megatron.core and megatron.training are the ones imported.
    PYPATH="$MEGATRON_LM:$PYPATH"
    TRAINER=("$REPO/patches/megatron_lm/pretrain_gpt_rw.py")
    if [[ "$HAS_CUDA" == 0 ]]; then
        TRAINER=(-m megatron_rw.megatron_lm_cpu "${TRAINER[@]}")
        mapfile -t CPU_ARGS < <(PYTHONPATH="$REPO" "$PYTHON" -c \
            'from megatron_rw.megatron_lm_cpu import CPU_FLAGS; print("\n".join(CPU_FLAGS))')
        PRECISION_ARGS+=("${CPU_ARGS[@]}")
    fi
    TRAINER_NAME="Megatron-LM $MEGATRON_LM"
else
    TRAINER=(-m megatron_rw.pretrain_gpt)
    TRAINER_NAME="megatron_rw.pretrain_gpt"
fi

LAUNCH=(
    "$PYTHON" -m torch.distributed.run
    --nproc-per-node "$GPUS_PER_NODE" --nnodes "$NNODES" --node-rank "$NODE_RANK"
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
    "${TRAINER[@]}"
    "${MODEL_ARGS[@]}" "${TRAIN_ARGS[@]}" "${REWEIGHT_ARGS[@]}" "${PRECISION_ARGS[@]}"
    "${DATA_ARGS[@]}"
    --save "$OUT" --load "$OUT" --tensorboard-dir "$OUT/tensorboard"
    "$@"
)
echo "pretrain_gpt_rw.sh: node $NODE_RANK/$NNODES, $GPUS_PER_NODE processes, $([[ $HAS_CUDA == 1 ]] && echo cuda/nccl || echo cpu/gloo), config $CONFIG_NAME, output $OUT, trainer $TRAINER_NAME"
PYTHONPATH="$PYPATH" exec "${LAUNCH[@]}"
