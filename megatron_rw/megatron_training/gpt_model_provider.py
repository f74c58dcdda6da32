"""The GPT model for megatron.training's ``pretrain`` in megatron-core 0.17 and 0.18.

Those releases take a ``model_provider(pre_process, post_process, vp_stage, config,
pg_collection)``; 0.19 builds the model from the arguments' config container itself and does not
call this. The layer specs come from megatron-core's own functions whose signatures are the same
from 0.17 to 0.19: the decoder block spec (dense or MoE layers, Transformer Engine or local) and
the MTP block spec after its last layer. ``--spec`` wins, and with ``--transformer-impl local``
context or sequence parallelism get the project's layer spec, as in pretrain_gpt.py.
"""

from __future__ import annotations

from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_decoder_block_spec,
                                                      get_gpt_decoder_layer_specs,
                                                      get_gpt_mtp_block_spec)
from megatron.core.transformer.spec_utils import import_module
from megatron.training import get_args
from megatron.training.arguments import core_transformer_config_from_args


def needs_project_layers(args) -> bool:
    """``--transformer-impl local`` with a layout its layer spec cannot run: context
    parallelism (its attention asserts one CP rank) or sequence parallelism (its norms refuse
    it), and no ``--spec``. The project's spec (megatron_rw/cpu/layers.py) builds plain GPT
    layers: MoE or MTP there is refused."""
    local = getattr(args, "transformer_impl", "local") == "local"
    needed = (local and (args.context_parallel_size > 1 or args.sequence_parallel)
              and args.spec is None)
    if needed and (args.num_experts or args.mtp_num_layers):
        raise SystemExit("megatron_rw/megatron_training: context or sequence parallelism with "
                         "--transformer-impl local runs dense models without MTP only "
                         "(Transformer Engine runs the others)")
    return needed


def model_provider(pre_process: bool = True, post_process: bool = True, vp_stage=None,
                   config=None, pg_collection=None) -> GPTModel:
    """This pipeline stage's (and virtual stage's) GPT from the parsed arguments."""
    from pretrain_gpt import after_parse  # the script running as __main__ imported this

    args = get_args()
    after_parse(args)  # 0.17 parses inside pretrain: the first call here follows the parsing
    if config is None:
        config = core_transformer_config_from_args(args)
    use_te = args.transformer_impl == "transformer_engine"
    layers = dict(use_transformer_engine=use_te, normalization=args.normalization,
                  qk_l2_norm=args.qk_l2_norm, vp_stage=vp_stage)
    if args.spec is not None:
        spec = import_module(args.spec)
    elif needs_project_layers(args):
        from megatron_rw.cpu.layers import cpu_gpt_block_spec
        spec = cpu_gpt_block_spec(config, vp_stage=vp_stage)
    else:
        spec = get_gpt_decoder_block_spec(config, **layers)
    mtp = None
    if args.mtp_num_layers:
        last_layer = get_gpt_decoder_layer_specs(config, **layers)[-1]
        mtp = get_gpt_mtp_block_spec(config, last_layer, use_transformer_engine=use_te,
                                     vp_stage=vp_stage)
    return GPTModel(
        config=config, transformer_layer_spec=spec, vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings, pre_process=pre_process,
        post_process=post_process, fp16_lm_cross_entropy=args.fp16_lm_cross_entropy,
        parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent, rotary_base=args.rotary_base,
        rope_scaling=args.use_rope_scaling, mtp_block_spec=mtp, vp_stage=vp_stage,
        pg_collection=pg_collection)
