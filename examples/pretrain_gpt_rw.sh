#!/usr/bin/env bash
""":"
# GPT pretraining with loss-based sample reweighting. Three ways to start it:
#
#   bash examples/pretrain_gpt_rw.sh [flags ...]      # starts torchrun on this node itself
#   torchrun [torchrun options] examples/pretrain_gpt_rw.sh [flags ...]             # torchrun's ranks
#   torchrun --no-python [torchrun options] examples/pretrain_gpt_rw.sh [flags ...]
#   srun --ntasks-per-node=<GPUs> bash examples/pretrain_gpt_rw.sh [flags ...]      # a task per GPU
#   MEGATRON_LM=/path/to/Megatron-LM bash examples/pretrain_gpt_rw.sh [pretrain_gpt.py flags ...]
#
# Who starts the ranks: when RANK, WORLD_SIZE and LOCAL_RANK are already set (torchrun, with or
# without --no-python, or any launcher that sets them with MASTER_ADDR and MASTER_PORT) this
# process is one rank and runs that rank's trainer itself, with no torchrun of its own. Under
# srun with more tasks than nodes (one task per GPU) the rank comes from SLURM_PROCID,
# SLURM_LOCALID and SLURM_STEP_NUM_TASKS, the rendezvous from the job's first node. Otherwise
# (bash by hand, or srun with one task per node) it starts torchrun with GPUS_PER_NODE workers.
# torchrun runs its script with Python: this file is also a Python program (everything up to the
# closing quotes below is one string to Python), which hands the file to bash.
#
# It trains with Megatron's own training loop: without MEGATRON_LM, the megatron.training of the
# installed megatron-core (0.17 on; 0.16.1's wheel has none: set MEGATRON_LM there) with
# megatron-rw's pretrain_gpt.py (megatron_rw/megatron_training), started by python -m
# megatron_rw.pretrain_gpt; with MEGATRON_LM, that checkout's unmodified pretrain_gpt.py. Both
# run through patches/megatron_lm/pretrain_gpt_rw.py. The
# config's flags and the corpus's flags are Megatron-LM's names, so the same CONFIG and DATA serve
# both; with the project's script each domain of the corpus is also validated on its own.
#
# By hand or under examples/slurm/pretrain_gpt_rw.sbatch, run it once per node; under
# examples/slurm/pretrain_gpt_rw_per_gpu.sbatch once per GPU. Flags given on the command line
# come last, so they override the config's (argparse keeps the last value):
#   bash examples/pretrain_gpt_rw.sh --sample-reweight-strategy quadratic --train-iters 500
#
# Environment, with defaults:
#   GPUS_PER_NODE  processes on this node      all visible GPUs; 2 on a machine without CUDA
#                                              (ignored when the ranks are started outside)
#   NNODES         nodes in the job            $SLURM_NNODES or 1
#   NODE_RANK      this node's index           $SLURM_NODEID or 0
#   MASTER_ADDR    rendezvous host             first host of $SLURM_JOB_NODELIST, else 127.0.0.1
#   MASTER_PORT    rendezvous port             6000
#   CONFIG         model and training flags    examples/configs/tiny_cpu.sh without CUDA,
#                                              examples/configs/gpt_125m.sh with it
#   DATA           corpus from megatron_rw.data.prepare (its manifest gives tokenizer and blends)
#                                              data/small; set DATA= to pass your own
#                                              --data-path and --tokenizer-model flags instead
#   OUT            checkpoints and TensorBoard (OUT/tensorboard)   runs/<config name>
#   PYTHON         interpreter with megatron-rw installed    python3
#   MEGATRON_LM    a Megatron-LM checkout to train with      unset: the installed megatron-core's
# With CUDA: NCCL and --bf16 (BF16=0 to train in fp32). Without: gloo and the CPU runtime, and
# OMP_NUM_THREADS = cores / processes unless set; with Megatron's loop also
# megatron_rw.cpu.megatron_lm (that loop on a CPU) and the flags it needs there
# (--transformer-impl local, --distributed-backend gloo, ...).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"

# Ranks started outside this script: by a launcher that set RANK, WORLD_SIZE and LOCAL_RANK,
# or by srun with one task per GPU (more tasks in this step than nodes).
LAUNCHED_BY=""
if [[ -n "${RANK:-}" && -n "${WORLD_SIZE:-}" && -n "${LOCAL_RANK:-}" ]]; then
    LAUNCHED_BY="${TORCHELASTIC_RUN_ID:+torchrun}"
    LAUNCHED_BY="${LAUNCHED_BY:-an outer launcher}"
elif [[ -n "${SLURM_PROCID:-}" && "${SLURM_STEP_NUM_TASKS:-1}" -gt "${SLURM_STEP_NUM_NODES:-1}" ]]; then
    LAUNCHED_BY=srun
    export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" WORLD_SIZE="$SLURM_STEP_NUM_TASKS"
    # This node's tasks, from SLURM_STEP_TASKS_PER_NODE ("4(x2),3": 4 on each of the first two
    # nodes, 3 on the third) and this node's index in the step.
    node="${SLURM_NODEID:-0}" LOCAL_WORLD_SIZE=1
    IFS=, read -ra counts <<< "${SLURM_STEP_TASKS_PER_NODE:-1}"
    for c in "${counts[@]}"; do
        repeat=1
        [[ "$c" == *"(x"* ]] && repeat="${c#*(x}" && repeat="${repeat%)}"
        if (( node < repeat )); then LOCAL_WORLD_SIZE="${c%%(*}"; break; fi
        node=$(( node - repeat ))
    done
    export LOCAL_WORLD_SIZE
fi
if [[ -n "$LAUNCHED_BY" ]]; then
    GPUS_PER_NODE="${LOCAL_WORLD_SIZE:-1}"  # this node's ranks: for the CPU thread count
fi

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

PRECISION_ARGS=()
if [[ "$HAS_CUDA" == 1 && "${BF16:-1}" == 1 ]]; then
    PRECISION_ARGS=(--bf16)
fi

PYPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OWN_SCRIPT=0
if [[ -z "${MEGATRON_LM:-}" ]]; then
    # Asked here too, so that the message comes once, before any rank starts.
    if ! PYTHONPATH="$PYPATH" "$PYTHON" -m megatron_rw.megatron_training.installed own; then
        echo "pretrain_gpt_rw.sh: $PYTHON has no megatron.training (megatron-core's wheels ship it from 0.17 on): install megatron-core >= 0.17, or set MEGATRON_LM=/path/to/Megatron-LM" >&2
        exit 2
    fi
    # Megatron's own training loop from the installed megatron-core, driven by the project's
    # pretrain_gpt.py through the patch (and on a CPU with megatron_rw.cpu.megatron_lm's flags).
    TRAINER=(-m megatron_rw.pretrain_gpt)
    TRAINER_NAME="Megatron's training loop (installed megatron.training)"
    OWN_SCRIPT=1
else
    if [[ ! -f "$MEGATRON_LM/pretrain_gpt.py" ]]; then
        echo "pretrain_gpt_rw.sh: MEGATRON_LM=$MEGATRON_LM has no pretrain_gpt.py" >&2
        exit 2
    fi
    MEGATRON_LM="$(cd "$MEGATRON_LM" && pwd)"
    # The checkout first: its megatron.core and megatron.training are the ones imported.
    PYPATH="$MEGATRON_LM:$PYPATH"
    TRAINER=("$REPO/patches/megatron_lm/pretrain_gpt_rw.py")
    if [[ "$HAS_CUDA" == 0 ]]; then
        TRAINER=(-m megatron_rw.cpu.megatron_lm "${TRAINER[@]}")
        mapfile -t CPU_ARGS < <(PYTHONPATH="$REPO" "$PYTHON" -c \
            'from megatron_rw.cpu.megatron_lm import CPU_FLAGS; print("\n".join(CPU_FLAGS))')
        PRECISION_ARGS+=("${CPU_ARGS[@]}")
    fi
    TRAINER_NAME="Megatron-LM $MEGATRON_LM"
fi

DATA_ARGS=()
DATA="${DATA-data/small}"
if [[ -n "$DATA" ]]; then
    # With the project's script Megatron's loop validates each domain as its own set. A
    # checkout's pretrain_gpt.py gets the weighted blend: its batches under --full-validation break with
    # tensor or pipeline parallelism (see megatron_rw/megatron_training/pretrain_gpt.py).
    PER_DOMAIN=()
    [[ "$OWN_SCRIPT" == 0 ]] || PER_DOMAIN=(--per-domain-validation)
    mapfile -t DATA_ARGS < <(PYTHONPATH="$PYPATH" "$PYTHON" -m megatron_rw.data.flags "$DATA" "${PER_DOMAIN[@]}")
    [[ ${#DATA_ARGS[@]} -gt 0 ]] || exit 2  # the error is already printed
fi

ARGS=(
    "${MODEL_ARGS[@]}" "${TRAIN_ARGS[@]}" "${REWEIGHT_ARGS[@]}" "${PRECISION_ARGS[@]}"
    "${DATA_ARGS[@]}"
    --save "$OUT" --load "$OUT" --tensorboard-dir "$OUT/tensorboard"
    "$@"
)
BACKEND="$([[ $HAS_CUDA == 1 ]] && echo cuda/nccl || echo cpu/gloo)"
if [[ -n "$LAUNCHED_BY" ]]; then
    # One rank: this process becomes its trainer (no torchrun of its own).
    export MASTER_ADDR MASTER_PORT
    if [[ "$RANK" == 0 ]]; then
        echo "pretrain_gpt_rw.sh: $WORLD_SIZE ranks started by $LAUNCHED_BY, $BACKEND, config $CONFIG_NAME, output $OUT, trainer $TRAINER_NAME"
    fi
    PYTHONPATH="$PYPATH" exec "$PYTHON" "${TRAINER[@]}" "${ARGS[@]}"
fi
echo "pretrain_gpt_rw.sh: node $NODE_RANK/$NNODES, $GPUS_PER_NODE processes, $BACKEND, config $CONFIG_NAME, output $OUT, trainer $TRAINER_NAME"
PYTHONPATH="$PYPATH" exec "$PYTHON" -m torch.distributed.run \
    --nproc-per-node "$GPUS_PER_NODE" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    "${TRAINER[@]}" "${ARGS[@]}"
# bash never gets here (exec); what follows is Python, kept from bash -n by this here-document.
: <<'pass'
":"""
# Python: torchrun ran this file as its training script (or someone ran `python` on it). Hand it
# to bash with the same arguments; torchrun's RANK, WORLD_SIZE and LOCAL_RANK make it train this
# one rank, with the interpreter torchrun used unless PYTHON says otherwise.
import os
import sys

os.environ.setdefault("PYTHON", sys.executable)
os.execvp("bash", ["bash", os.path.abspath(__file__), *sys.argv[1:]])
pass
