"""GPT pretraining on megatron-core's own parts, with loss-based sample reweighting.

    torchrun --nproc-per-node 2 -m megatron_rw.pretrain_gpt --num-layers 2 --hidden-size 64 \\
        --num-attention-heads 4 --seq-length 128 --micro-batch-size 4 --global-batch-size 16 \\
        --train-iters 200 --lr 1e-3 --data-path 1 data/small/megatron/code_train ... \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model data/small/tokenizer.model \\
        --sample-reweight-strategy linupper --sample-reweight-r 0.4

A small stand-in for Megatron-LM's ``pretrain_gpt.py`` (not on PyPI): GPTModel, Megatron DDP,
``get_megatron_optimizer``, ``OptimizerParamScheduler`` and ``get_forward_backward_func``, with
``reweighted_loss_func`` in place of Megatron-LM's ``loss_func``. Runs on GPUs (NCCL, Transformer
Engine layers when importable) and on CPUs (gloo, ``enable_cpu_runtime``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from functools import partial

import torch

from megatron_rw.cpu_runtime import backend, enable_cpu_runtime

ON_CPU = enable_cpu_runtime()  # before megatron is imported: it must see "cuda" == cpu

import torch.distributed as dist  # noqa: E402

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from megatron.core import parallel_state as ps  # noqa: E402
    from megatron.core.distributed import (  # noqa: E402
        DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads)
    from megatron.core.models.gpt import GPTModel  # noqa: E402
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer  # noqa: E402
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler  # noqa: E402
    from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed  # noqa: E402
    from megatron.core.transformer import TransformerConfig  # noqa: E402

from megatron_rw.compat import slice_for_context_parallel  # noqa: E402
from megatron_rw.config import ReweightConfig  # noqa: E402
from megatron_rw.cpu_layers import cpu_gpt_block_spec  # noqa: E402
from megatron_rw.data.tokenizer import SentencePieceTokenizer  # noqa: E402
from megatron_rw.loss import (  # noqa: E402
    LM_LOSS, PREVIEW_ESS, PREVIEW_WEIGHT, TEMPERATURE, checked_loss_func)
from megatron_rw.schedule import temperature_at  # noqa: E402
from megatron_rw.telemetry import DOMAIN_LOSS, DOMAIN_WEIGHT, SampleTelemetry  # noqa: E402
from megatron_rw.training import checkpoint  # noqa: E402
from megatron_rw.training.arguments import ArgumentError, parse_args, validate_layout  # noqa: E402
from megatron_rw.units import document_units  # noqa: E402
from megatron_rw.training.data import (  # noqa: E402
    build_datasets, check_data, data_blends, micro_batches, train_domains)
from megatron_rw.training.metrics import (  # noqa: E402
    REPORT_KEYS, MetricsWriter, SampleLog, average_reports)

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def print_rank0(*a) -> None:
    if dist.get_rank() == 0:
        print(*a, flush=True)


def padded_vocab_size(vocab: int, args) -> int:
    """Megatron-LM's padding: a multiple of --make-vocab-size-divisible-by x TP."""
    multiple = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    return int(math.ceil(vocab / multiple) * multiple)


def layer_spec(config: TransformerConfig, args):
    """CPU: our gloo-safe spec. GPU: Transformer Engine's spec when it imports, else the local one."""
    if ON_CPU:
        return cpu_gpt_block_spec(config)
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec)
        return get_gpt_layer_with_transformer_engine_spec()
    except ImportError:
        return get_gpt_layer_local_spec(normalization=args.normalization)


def build_model(args, vocab_size: int):
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    config = TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads, ffn_hidden_size=args.ffn_hidden_size,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std, normalization=args.normalization,
        gated_linear_unit=args.swiglu,
        activation_func=torch.nn.functional.silu if args.swiglu else torch.nn.functional.gelu,
        bf16=args.bf16, params_dtype=dtype, pipeline_dtype=dtype,
        use_cpu_initialization=ON_CPU,
        # gloo: batched isend/irecv is unreliable; p2p overlap needs CUDA streams.
        batch_p2p_comm=not ON_CPU, overlap_p2p_comm=False,
    )
    model = GPTModel(
        config=config, transformer_layer_spec=layer_spec(config, args), vocab_size=vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type, rotary_base=args.rotary_base,
    )
    if not ON_CPU:
        model.cuda(torch.cuda.current_device())
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=args.bf16)
    model = DistributedDataParallel(config, ddp_config, model)
    opt_config = OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        clip_grad=args.clip_grad, bf16=args.bf16, params_dtype=dtype)
    optimizer = get_megatron_optimizer(opt_config, [model])
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters, lr_decay_steps=args.lr_decay_iters,
        lr_decay_style=args.lr_decay_style, start_wd=args.weight_decay, end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters, wd_incr_style="constant")
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    return model, optimizer, scheduler, config


def forward_step(rw_config: ReweightConfig, iteration: int, telemetry, eod: int, data_iterator,
                 model):
    """Megatron-LM's forward_step with the reweighted loss. ``telemetry`` is None or a
    ``SampleTelemetry`` without ids; this micro-batch's come from the blend's ``dataset_id``.
    With document units, each token's document slot is found on the whole rows and then sliced
    for context parallelism with the rest of the batch."""
    raw = next(data_iterator)
    batch = {k: raw[k].cuda(non_blocking=True) for k in BATCH_KEYS}
    if rw_config.unit == "document":
        batch["units"] = document_units(batch["labels"], eod, rw_config.max_documents)
    batch = slice_for_context_parallel(batch, ps.get_context_parallel_group())
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    if telemetry is not None and telemetry.domain_names and "dataset_id" in raw:
        telemetry = dataclasses.replace(
            telemetry, domain_ids=raw["dataset_id"].cuda(non_blocking=True))
    return output, partial(checked_loss_func, batch["loss_mask"], config=rw_config,
                           iteration=iteration, telemetry=telemetry, units=batch.get("units"))


class Trainer:
    """The training loop's state: model, optimizer, data position, metrics."""

    def __init__(self, args, model, optimizer, scheduler, train_ds, valid_ds, writer, samples,
                 eod: int):
        self.args, self.model, self.optimizer, self.scheduler = args, model, optimizer, scheduler
        self.eod = eod
        self.train_ds, self.valid_ds, self.writer, self.samples = train_ds, valid_ds, writer, samples
        self.domains = train_domains(args)
        # Per-domain mean weight and loss ride in the loss report as [sum, count] pairs.
        self.rw_config = ReweightConfig.from_args(args)
        per_domain = (DOMAIN_WEIGHT, DOMAIN_LOSS) + ((PREVIEW_WEIGHT,) if self.rw_config.preview
                                                     else ())
        self.report_keys = REPORT_KEYS + (TEMPERATURE, PREVIEW_ESS) + tuple(
            k.format(d) for d in self.domains for k in per_domain)
        self.fwd_bwd = get_forward_backward_func()
        self.dp_rank = ps.get_data_parallel_rank(with_context_parallel=False)
        self.iteration = self.consumed = 0

    def _run(self, dataset, consumed, rw_config, iteration, forward_only, telemetry=None):
        a = self.args
        data = micro_batches(dataset, consumed, a.num_microbatches, a.micro_batch_size,
                             self.dp_rank, a.data_parallel_size)
        return self.fwd_bwd(
            forward_step_func=partial(forward_step, rw_config, iteration, telemetry, self.eod),
            data_iterator=data,
            model=self.model, num_microbatches=a.num_microbatches, seq_length=a.seq_length,
            micro_batch_size=a.micro_batch_size, forward_only=forward_only)

    def train_step(self):
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        logged = (self.iteration + 1) % self.args.log_interval == 0
        sink = self.samples.record if logged and self.samples.active else None
        telemetry = (SampleTelemetry(domain_names=self.domains, sink=sink)
                     if (self.domains or sink) else None)
        reports = self._run(self.train_ds, self.consumed, self.rw_config, self.iteration, False,
                            telemetry)
        ok, grad_norm, _ = self.optimizer.step()
        if ok:
            self.scheduler.step(increment=1)
        self.iteration += 1
        self.consumed += self.args.global_batch_size
        return average_reports(reports, self.report_keys), grad_norm, ok

    def evaluate(self):
        """Unweighted lm loss on the same first --eval-iters global batches of every valid set."""
        self.model.eval()
        uniform = ReweightConfig(skip_nonfinite=self.rw_config.skip_nonfinite)
        results = {}
        with torch.no_grad():
            for name, ds in self.valid_ds.items():
                reports = []
                for k in range(self.args.eval_iters):
                    reports += self._run(ds, k * self.args.global_batch_size, uniform,
                                         self.iteration, True) or []
                results[name] = average_reports(reports).get(LM_LOSS, float("nan"))
        self.model.train()
        parts = [f"{n} lm loss: {v:.6E}" for n, v in results.items()]
        line = f" validation loss at iteration {self.iteration} | " + " | ".join(parts)
        print_rank0("-" * len(line) + "\n" + line + "\n" + "-" * len(line))
        self.writer.write(self.iteration, {f"valid/{n}/lm loss": v for n, v in results.items()})

    def save(self):
        checkpoint.save_checkpoint(self.args.save, self.iteration, self.consumed, self.model,
                                   self.optimizer, self.scheduler)
        print_rank0(f"  saved checkpoint at iteration {self.iteration:7d} to {self.args.save}")

    def train(self):
        a = self.args
        # Per-key counts: a domain may be absent from some steps of the interval.
        sums, seen, n_iters, skipped = {}, {}, 0, 0
        grad_norms = []
        last_log = time.perf_counter()
        saved_at = None
        while self.iteration < a.train_iters:
            lr = self.optimizer.param_groups[0]["lr"]
            r = temperature_at(self.rw_config, self.iteration)
            averages, grad_norm, ok = self.train_step()
            skipped += not ok
            for k, v in averages.items():
                sums[k] = sums.get(k, 0.0) + v
                seen[k] = seen.get(k, 0) + 1
            if grad_norm is not None:
                grad_norms.append(grad_norm)
            n_iters += 1
            if self.iteration % a.log_interval == 0:
                elapsed = (time.perf_counter() - last_log) * 1000 / n_iters
                scalars = {k: sums[k] / seen[k] for k in self.report_keys if k in sums}
                # With a target ESS the hook reports the r it chose (mean over micro-batches).
                r = scalars.get(TEMPERATURE, r)
                scalars.update({"learning rate": lr, TEMPERATURE: r,
                                "iteration time (ms)": elapsed,
                                "consumed samples": self.consumed})
                if grad_norms:
                    scalars["grad norm"] = sum(grad_norms) / len(grad_norms)
                self.writer.write(self.iteration, {f"train/{k}": v for k, v in scalars.items()})
                line = (f" iteration {self.iteration:8d}/{a.train_iters:8d} |"
                        f" consumed samples: {self.consumed:12d} |"
                        f" elapsed time per iteration (ms): {elapsed:.1f} |"
                        f" learning rate: {lr:.6E} | global batch size: {a.global_batch_size:5d} |")
                for k in REPORT_KEYS:
                    if k in scalars:
                        line += f" {k}: {scalars[k]:.6E} |"
                line += f" {TEMPERATURE}: {r:.4g} |"
                if PREVIEW_ESS in scalars:
                    line += f" {PREVIEW_ESS}: {scalars[PREVIEW_ESS]:.6E} |"
                if grad_norms:
                    line += f" grad norm: {scalars['grad norm']:.3f} |"
                line += f" number of skipped iterations: {skipped:3d} |"
                print_rank0(line)
                self.samples.flush(self.iteration, r)
                sums, seen, n_iters, skipped, grad_norms = {}, {}, 0, 0, []
                last_log = time.perf_counter()
            if self.valid_ds and a.eval_interval and self.iteration % a.eval_interval == 0:
                self.evaluate()
            if a.save and a.save_interval and self.iteration % a.save_interval == 0:
                self.save()
                saved_at = self.iteration
            if a.exit_interval and self.iteration % a.exit_interval == 0:
                break
        if self.valid_ds and not (a.eval_interval and self.iteration % a.eval_interval == 0):
            self.evaluate()
        if a.save and saved_at != self.iteration:
            self.save()


def setup(args):
    """Everything before the first step; raises ArgumentError on bad input."""
    world = dist.get_world_size()
    validate_layout(args, world)
    if not os.path.isfile(args.tokenizer_model):
        raise ArgumentError(f"--tokenizer-model: {args.tokenizer_model} does not exist")
    tokenizer = SentencePieceTokenizer(args.tokenizer_model)
    check_data(data_blends(args), tokenizer)
    try:
        ReweightConfig.from_args(args).check_normalisation_group(args.data_parallel_size,
                                                                 args.micro_batch_size)
    except ValueError as e:
        raise ArgumentError(str(e)) from None
    return tokenizer


def main(argv=None) -> int:
    args = parse_args(argv)
    if not ON_CPU:
        # Modulo the visible devices: srun may give each task only its own GPU (LOCAL_RANK 3,
        # one visible device), torchrun gives every worker all of them.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(backend())
    try:
        tokenizer = setup(args)
    except ArgumentError as e:
        if dist.get_rank() == 0:
            print(f"pretrain_gpt: error: {e}", file=sys.stderr, flush=True)
        dist.destroy_process_group()
        return 2

    ps.initialize_model_parallel(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size)
    # Megatron-LM's seeding: one seed per pipeline stage, TP offsets inside the RNG tracker;
    # data-parallel replicas share the seed.
    seed = args.seed + 100 * ps.get_pipeline_model_parallel_rank()
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)

    vocab = padded_vocab_size(tokenizer.vocab_size, args)
    model, optimizer, scheduler, _ = build_model(args, vocab)
    n_params = sum(p.numel() for p in model.parameters())
    print_rank0(f" > world {dist.get_world_size()}: TP {args.tensor_model_parallel_size} PP "
                f"{args.pipeline_model_parallel_size} CP {args.context_parallel_size} DP "
                f"{args.data_parallel_size}; {args.num_microbatches} micro-batches per step; "
                f"vocab {tokenizer.vocab_size} padded to {vocab}; {n_params} parameters on rank 0; "
                f"{'cpu/gloo' if ON_CPU else 'cuda'}")

    metrics_file = args.metrics_file or (
        os.path.join(args.save or args.tensorboard_dir, "metrics.jsonl")
        if (args.save or args.tensorboard_dir) else None)
    if metrics_file is None:
        print_rank0("note: no --save, --tensorboard-dir or --metrics-file: scalars are only printed")
    writer = MetricsWriter(metrics_file, args.tensorboard_dir, active=dist.get_rank() == 0)
    # The first data-parallel replica's rows, from the rank that runs its loss function.
    samples = SampleLog(
        os.path.join(os.path.dirname(os.path.abspath(metrics_file)), "sample_weights.jsonl")
        if args.log_sample_weights and metrics_file else None,
        active=(ps.is_pipeline_last_stage(ignore_virtual=True)
                and ps.get_tensor_model_parallel_rank() == 0
                and ps.get_data_parallel_rank(with_context_parallel=True) == 0))

    train_ds, valid_ds = build_datasets(args, tokenizer)
    trainer = Trainer(args, model, optimizer, scheduler, train_ds, valid_ds, writer, samples,
                      eod=tokenizer.eod)
    if args.load:
        trainer.iteration, trainer.consumed = checkpoint.load_checkpoint(
            args.load, model, optimizer, scheduler)
        print_rank0(f" > loaded iteration {trainer.iteration} ({trainer.consumed} samples) "
                    f"from {args.load}" if trainer.iteration else
                    f" > no checkpoint in {args.load}: training from scratch")
    trainer.train()
    writer.close()
    samples.close()
    ps.destroy_model_parallel()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
