"""The Megatron integration without a checkout: the project's ``pretrain_gpt.py`` for the installed
megatron-core's ``megatron.training`` (0.17 on), run through patches/megatron_lm like a
checkout's script.

``pretrain_gpt.py`` (the script; its folder goes on ``sys.path``), ``gpt_model_provider.py``
(0.17, 0.18), ``tp_batch.py`` (each release's TP batch broadcast), ``installed.py`` (what the
installed ``megatron.training`` offers, read without importing it; the launcher asks),
``run_log.py`` (a run's TensorBoard events read back). ``python -m megatron_rw.pretrain_gpt``
starts one rank.
"""
