"""A ``pretrain_gpt.py`` for the ``megatron.training`` that megatron-core's wheels ship.

megatron-core's wheels from 0.17 on carry Megatron-LM's training loop (``pretrain``, its argument
parser, checkpointing, the rerun state machine) but not the ``pretrain_gpt.py`` that drives it.
This file is the project's own script of that shape: a batch function, Megatron's plain loss with
its checks, ``forward_step``, a GPT dataset provider and a main block that calls ``pretrain`` the
way the installed release takes it (0.19: the model from Megatron's own config container; 0.17
and 0.18: from gpt_model_provider.py, bitwise the same model on 0.19). Run it the way a
checkout's script is run, through the patch, which swaps the loss partial for the reweighted one
exactly as for a checkout:

    PYTHONPATH=$REPO/megatron_rw/megatron_training:$REPO torchrun --nproc-per-node 8 \\
        patches/megatron_lm/pretrain_gpt_rw.py <pretrain_gpt flags> --sample-reweight-strategy linupper

(``python -m megatron_rw.cpu.megatron_lm patches/megatron_lm/pretrain_gpt_rw.py ...`` on a CPU.)
Run alone it trains Megatron's unweighted loss.

With ``--transformer-impl local`` (a CPU), context and sequence parallelism run on the project's
layer spec (:func:`layer_spec_for_local_layouts`).

Not here yet (a Megatron-LM checkout's ``pretrain_gpt.py`` has them; set ``MEGATRON_LM``):
packed sequences (``--sft``, ``--dataloader-inter-document-masking``), FIM data, ModelOpt,
offline distillation and the EP-overlap schedule plan; each refuses at start-up.
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Tuple

import torch

from megatron.core import mpu
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.enums import ModelType
from megatron.core.rerun_state_machine import get_rerun_state_machine
from megatron.core.transformer.multi_token_prediction import get_mtp_ranks, mtp_on_this_rank
from megatron.training import get_args, pretrain
from megatron.training.arguments import core_transformer_config_from_args
from megatron.training.utils import get_blend_and_blend_per_split

from megatron_rw.compat import slice_for_context_parallel
from megatron_rw.megatron_training.tp_batch import batch_on_this_tp_rank

# What the installed megatron.training's pretrain expects, by what it offers (the main block):
# 0.19 builds the model from the arguments' config container; 0.18 parses in the caller and takes
# a model_provider; 0.17 parses inside pretrain. The patch wraps parse_and_validate_args where
# this module has it, so the name exists only where megatron.training does.
try:
    from megatron.training.arguments import parse_and_validate_args  # noqa: F401  (0.18+)
except ImportError:
    pass
try:
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
except ImportError:  # 0.17
    pretrain_cfg_container_from_args = None
try:
    from megatron.training.argument_utils import gpt_config_from_args
except ImportError:  # 0.17, 0.18
    gpt_config_from_args = None

# Batch fields in the order forward_step unpacks them.
FIELDS = ("tokens", "labels", "loss_mask", "attention_mask", "position_ids")
# Megatron-LM's spiky-loss rule: 10x the largest loss seen.
SPIKY_LOSS_FACTOR = 10
UNSUPPORTED = {
    "sft": "--sft", "dataloader_inter_document_masking": "--dataloader-inter-document-masking",
    "fim_data": "--fim-data", "modelopt_enabled": "ModelOpt",
    "logits_load_dir": "--logits-load-dir", "overlap_moe_expert_parallel_comm":
    "--overlap-moe-expert-parallel-comm"}


def _reads_data(args, vp_stage: Optional[int]) -> Tuple[bool, bool]:
    """Whether this pipeline stage needs the batch (the first: tokens; the last: labels and loss
    mask; any stage holding MTP layers: labels), and whether it holds MTP layers."""
    mtp = False
    if args.mtp_num_layers:  # the layout needs the model config: built only when it matters
        config = core_transformer_config_from_args(args)
        mtp = mtp_on_this_rank(layout=config.pipeline_model_parallel_layout,
                               mtp_num_layers=config.mtp_num_layers, ignore_virtual=False,
                               vp_stage=vp_stage)
    first = mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    last = mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    return first or last or mtp, mtp


def get_batch(data_iterator, vp_stage: Optional[int] = None, training: bool = True):
    """This rank's part of the next micro-batch: ``(tokens, labels, loss_mask, attention_mask,
    position_ids)``, each ``[b, s / cp]`` (None on stages that read no data). The first TP rank
    draws it and broadcasts it over the TP group; then it is sliced for context parallelism.
    ``b`` is ``--micro-batch-size`` in training, ``--eval-micro-batch-size`` in evaluation
    (where megatron.training has it, 0.18 on)."""
    args = get_args()
    needed, mtp = _reads_data(args, vp_stage)
    if not needed:
        return (None,) * len(FIELDS)
    batch = batch_on_this_tp_rank(
        data_iterator, FIELDS, args, mtp=mtp,
        micro_batch_size=(args.micro_batch_size if training
                          else getattr(args, "eval_micro_batch_size", args.micro_batch_size)))
    batch = slice_for_context_parallel(batch, mpu.get_context_parallel_group())
    return tuple(batch.get(k) for k in FIELDS)


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor, model=None):
    """Megatron's masked token-sum loss and its checks: NaN and Inf stop the run under
    ``--check-for-nan-in-loss-and-grad``, a spiky loss is reported under
    ``--check-for-spiky-loss``. Returns ``(sum(mask * l), tokens, {"lm loss": [sum, tokens]})``.
    Through the patch the reweighted loss trains and this runs for its checks alone."""
    args = get_args()
    loss = torch.sum(output_tensor.view(-1).float() * loss_mask.view(-1).float())
    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    machine = get_rerun_state_machine()
    if args.check_for_nan_in_loss_and_grad:
        for reject, what in ((torch.isnan, "NaN"), (torch.isinf, "Inf")):
            machine.validate_result(result=loss, rejection_func=reject, tolerance=0.0,
                                    message=f"found {what} in local forward loss calculation",
                                    fatal=True)
    if args.check_for_spiky_loss:
        machine.validate_result(
            result=loss, message="Spiky loss", tolerance=0.0, fatal=False,
            rejection_func=partial(machine.is_unexpectedly_large, threshold=SPIKY_LOSS_FACTOR,
                                   context="loss"))
    return loss, num_tokens, {"lm loss": torch.cat([loss.detach().view(1),
                                                    num_tokens.view(1)])}


def forward_step(data_iterator, model, return_schedule_plan: bool = False):
    """One micro-batch forward: ``(per-token losses [b, s / cp], partial(loss_func, loss_mask,
    model=model))``."""
    if return_schedule_plan:
        raise ValueError("--overlap-moe-expert-parallel-comm needs a Megatron-LM checkout's "
                         "pretrain_gpt.py (set MEGATRON_LM)")
    from megatron.core.utils import get_attr_wrapped_model

    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(
        data_iterator, get_attr_wrapped_model(model, "vp_stage"), training=model.training)
    output = model(tokens, position_ids, attention_mask, labels=labels, loss_mask=loss_mask)
    return output, partial(loss_func, loss_mask, model=model)


def train_valid_test_datasets_provider(num_samples, vp_stage=None):
    """GPT datasets (``--mock-data`` or the ``--data-path`` / per-split blends) from the args."""
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer

    args = get_args()
    blend, per_split = get_blend_and_blend_per_split(args)
    config = GPTDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, blend=blend,
        blend_per_split=per_split, split=args.split,
        multiple_validation_sets=args.multiple_validation_sets,
        full_validation=args.full_validation,
        num_dataset_builder_threads=args.num_dataset_builder_threads,
        path_to_cache=args.data_cache_path, mmap_bin_files=args.mmap_bin_files,
        tokenizer=build_tokenizer(args), reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask, eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=args.create_attention_mask_in_dataloader,
        mid_level_dataset_surplus=args.mid_level_dataset_surplus,
        allow_ambiguous_pad_tokens=args.allow_ambiguous_pad_tokens,
        context_parallel_size=args.context_parallel_size,
        data_parallel_size=args.data_parallel_size)
    dataset = MockGPTDataset if args.mock_data else GPTDataset

    def built_on_this_rank():
        return mpu.get_tensor_model_parallel_rank() == 0 and _reads_data(args, vp_stage)[0]

    return BlendedMegatronDatasetBuilder(dataset, num_samples, built_on_this_rank,
                                         config).build()


def embedding_ranks(pp_ranks):
    """Ranks holding a copy of the word embeddings, whose gradients Megatron all-reduces: the
    first stage, the last one unless the output layer is untied, and every stage with MTP
    layers (they embed their shifted inputs)."""
    args = get_args()
    ranks = {pp_ranks[0]}
    if len(pp_ranks) > 1:
        if not args.untie_embeddings_and_output_weights:
            ranks.add(pp_ranks[-1])
        ranks.update(get_mtp_ranks(pp_ranks, core_transformer_config_from_args(args)))
    return sorted(ranks)


def full_validation_batches(args) -> None:
    """With ``--full-validation`` Megatron's sampler hands each data-parallel rank one sample
    per micro-batch, one pass over the set. Evaluation then runs micro-batches of one sample,
    one per data rank and step, so that the TP broadcast and the pipeline's tensor shapes
    match what is drawn and every sample counts once (with the training batch sizes a TP rank
    expects ``--micro-batch-size`` rows and the cyclic loader repeats samples). megatron-core
    0.17 has no evaluation batch sizes: its full validation draws training-sized micro-batches,
    left as they are."""
    if args.full_validation and hasattr(args, "eval_micro_batch_size"):
        args.eval_micro_batch_size = 1
        args.eval_global_batch_size = (args.data_parallel_size
                                       * getattr(args, "gtp_weight_remat_size", 1))


def layer_spec_for_local_layouts(args, model_config) -> None:
    """Give ``--transformer-impl local`` the project's layer spec (megatron_rw/cpu/layers.py)
    where Megatron's local spec cannot run the layout: context parallelism (its attention
    asserts one CP rank) and sequence parallelism (its norms refuse it). The project's spec is
    the local one with attention that all-gathers keys and values over the CP group and norms
    that accept sequence parallelism: what runs CP and SP on a CPU, where Transformer Engine is
    absent. Dense models without MTP only (the spec builds plain GPT layers); ``--spec`` wins."""
    from megatron_rw.megatron_training.gpt_model_provider import needs_project_layers

    if not needs_project_layers(args):
        return
    from megatron_rw.cpu.layers import cpu_gpt_block_spec

    def block_spec(config, vp_stage=None):
        return cpu_gpt_block_spec(config.transformer, vp_stage=vp_stage)

    model_config.transformer_layer_spec = block_spec


def after_parse(args) -> None:
    """What this script decides once the flags are parsed (once per run): refusals, the
    evaluation batch sizes under full validation."""
    if getattr(args, "_megatron_rw_parsed", False):
        return
    refuse_unsupported(args)
    full_validation_batches(args)
    args._megatron_rw_parsed = True


def refuse_unsupported(args) -> None:
    for name, flag in UNSUPPORTED.items():
        if getattr(args, name, None):
            raise SystemExit(f"megatron_rw/megatron_training/pretrain_gpt.py does not support "
                             f"{flag} yet: set MEGATRON_LM=/path/to/Megatron-LM to train with "
                             "that checkout's pretrain_gpt.py")


if __name__ == "__main__":
    # The datasets are built on the ranks that read data and broadcast by Megatron's loader.
    train_valid_test_datasets_provider.is_distributed = True
    defaults = {"tokenizer_type": "GPT2BPETokenizer"}
    common = dict(get_embedding_ranks=embedding_ranks)
    if "parse_and_validate_args" not in globals():  # 0.17: pretrain parses the flags
        from megatron_rw.megatron_training.gpt_model_provider import model_provider
        pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder,
                 forward_step, args_defaults=defaults, **common)
    else:
        args = parse_and_validate_args(args_defaults=defaults)
        after_parse(args)
        if gpt_config_from_args is not None:  # 0.19: the model from the config container
            model_config = gpt_config_from_args(args)
            layer_spec_for_local_layouts(args, model_config)
            pretrain(pretrain_cfg_container_from_args(args, model_config),
                     train_valid_test_datasets_provider, ModelType.encoder_or_decoder,
                     forward_step, **common)
        else:  # 0.18
            from megatron_rw.megatron_training.gpt_model_provider import model_provider
            pretrain(pretrain_cfg_container_from_args(args), train_valid_test_datasets_provider,
                     model_provider, ModelType.encoder_or_decoder, forward_step, **common)
