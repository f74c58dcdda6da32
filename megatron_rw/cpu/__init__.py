"""The CPU runtime: unmodified megatron-core and Megatron's training loop on CPUs with gloo.

``runtime`` (``enable_cpu_runtime``: megatron-core's CUDA calls on the CPU), ``stubs`` (what
Transformer Engine and Apex would provide), ``layers`` (a GPT layer spec whose attention runs
context parallelism and whose norm accepts sequence parallelism), ``megatron_lm`` (``python -m
megatron_rw.cpu.megatron_lm SCRIPT.py``: a Megatron ``pretrain_gpt.py`` on a CPU). For tests,
the demo and CI; inert where CUDA is present.
"""
