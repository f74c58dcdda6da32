"""Step time of reweighting on one GPU at GPT-2-small scale, interleaved with the baseline.

    python -m benchmarks.gpu.gpu_overhead --out raw.json [--pairs 30] [--warmup 5]

A worker of benchmarks/gpu/gpu_check.py (which analyses its output with benchmarks/cost/overhead.py's
``analyse``). One process, a world of one (NCCL on a GPU, gloo on a CPU for tests). The model is the
MODEL_ARGS of examples/configs/gpt_125m.sh (12 layers, hidden 768, 12 heads, sequence 1024) with
GPT-2's vocabulary (50257, padded to 50304: 124M parameters), in bf16, with its TRAIN_ARGS'
optimizer settings, parsed by Megatron's parser and built by ``benchmarks.gpu.gpt_model`` (Transformer
Engine layers when importable, else megatron-core's local ones; Megatron DDP with fp32 grad
reduction; bf16 Adam). Steps alternate A B / B A on the same model as
in benchmarks/cost/overhead_worker.py:

- A: Megatron-LM's pretrain_gpt ``loss_func`` contract (``tests._layouts.gpt_loss_func``);
- B: ``reweighted_loss_func``, linupper, r = 0.4, past its burn-in.

Tokens are random: the data does not change the cost of a step.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings

warnings.filterwarnings("ignore")  # Megatron warns about missing TE/Apex on every import

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from benchmarks.cost import overhead_worker as W  # noqa: E402  (installs the CPU runtime without a GPU)
from benchmarks.gpu.gpu_check import config_flags  # noqa: E402
from megatron_rw.cpu.runtime import backend  # noqa: E402
from tests.workers.launch import REPO, free_port  # noqa: E402

CONFIG = os.path.join(REPO, "examples", "configs", "gpt_125m.sh")
GPT2_VOCAB = 50257


def build(flags: list, vocab: int):
    """Megatron's parsed args, the padded vocabulary, the model (DDP-wrapped) and optimizer for
    ``flags`` (a world of one)."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from benchmarks.gpu import gpt_model
    from benchmarks.megatron_args import parse_flags

    args = parse_flags(flags)
    ps.initialize_model_parallel()
    torch.manual_seed(1234)
    model_parallel_cuda_manual_seed(1234)
    vocab = gpt_model.padded_vocab_size(vocab, args)
    model, optimizer, _ = gpt_model.build(args, vocab)
    return args, vocab, model, optimizer


def random_batches(micro: int, mbs: int, seq: int, vocab: int) -> list:
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(micro):
        stream = torch.randint(0, vocab, (mbs, seq + 1), generator=gen)
        batch = {"tokens": stream[:, :-1], "labels": stream[:, 1:],
                 "loss_mask": torch.ones(mbs, seq),
                 "position_ids": torch.arange(seq).expand(mbs, seq)}
        batches.append({k: v.contiguous().to(torch.cuda.current_device())
                        for k, v in batch.items()})
    return batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="pairs excluded from the statistics")
    parser.add_argument("--micro", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=GPT2_VOCAB)
    parser.add_argument("--config", default=CONFIG,
                        help="launcher config whose MODEL_ARGS and TRAIN_ARGS to use")
    parser.add_argument("--model-args", default="",
                        help="flags appended to the config's (they win), e.g. a tiny shape for tests")
    a = parser.parse_args()

    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(0)
    dist.init_process_group(backend(), init_method=f"tcp://127.0.0.1:{free_port()}",
                            rank=0, world_size=1)
    flags = (config_flags(a.config) + shlex.split(a.model_args)
             + ["--micro-batch-size", str(a.micro_batch_size)] + ["--bf16"] * on_gpu)
    args, vocab, model, optimizer = build(flags, a.vocab)
    batches = random_batches(a.micro, a.micro_batch_size, args.seq_length, vocab)

    def step(name, step_no):
        return W.timed_step(model, optimizer, batches, W.loss_function(name, step_no),
                            a.micro_batch_size, args.seq_length)

    samples = W.interleaved_samples(step, a.pairs, a.warmup)
    result = {
        "layout": "1gpu" if on_gpu else "1cpu", "samples_s": samples,
        "model": {"flags": flags, "parameters": sum(p.numel() for p in model.parameters()),
                  "padded_vocab": vocab, "seq_length": args.seq_length,
                  "dtype": "bf16" if args.bf16 else "fp32",
                  "layers": _layers(on_gpu)},
        "micro_batch_size": a.micro_batch_size, "num_microbatches": a.micro,
        "tokens_per_step": a.micro * a.micro_batch_size * args.seq_length,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "pairs": a.pairs, "warmup_pairs": a.warmup,
    }
    with open(a.out, "w") as f:
        json.dump(result, f)
    med = {v: sorted(s["step"])[len(s["step"]) // 2] * 1e3 for v, s in samples.items()}
    print(f"gpu_overhead: {result['model']['parameters']} parameters, median step ms {med}",
          flush=True)
    dist.destroy_process_group()
    return 0


def _layers(on_gpu: bool) -> str:
    """Which layer implementation ``gpt_model.layer_spec`` picked."""
    if not on_gpu:
        return "megatron_rw.cpu.layers (CPU runtime)"
    try:
        import transformer_engine  # noqa: F401
        return "Transformer Engine"
    except ImportError:
        return "megatron-core local (no Transformer Engine)"


if __name__ == "__main__":
    sys.exit(main())
