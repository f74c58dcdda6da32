# GPT ~1.2B (24 layers, hidden 2048, SwiGLU, RMSNorm) with tensor parallelism 2: with 8 GPUs per
# node, 4 data-parallel replicas per node. Reweighting as the paper's larger runs: linupper,
# r = 0.4 after 1000 uniform burn-in steps (IBM's 1.4B/7B runs hold r = 100 for 2000 steps first:
# --sample-reweight-schedule linear --sample-reweight-r-start 100 --sample-reweight-anneal-iters N).
# NOT RUN HERE: written for GPUs (bf16, Transformer Engine layers); the project's machines have
# none. For deeper models add --pipeline-model-parallel-size (it must divide --num-layers).
MODEL_ARGS=(
    --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --ffn-hidden-size 5632
    --seq-length 2048 --max-position-embeddings 2048 --position-embedding-type rope
    --normalization RMSNorm --swiglu --untie-embeddings-and-output-weights
    --hidden-dropout 0.0 --attention-dropout 0.0 --init-method-std 0.02
    --make-vocab-size-divisible-by 128
)
TRAIN_ARGS=(
    --tensor-model-parallel-size 2 --pipeline-model-parallel-size 1
    --micro-batch-size 4 --global-batch-size 512 --train-iters 50000
    --lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine --lr-warmup-iters 2000
    --weight-decay 0.1 --clip-grad 1.0 --adam-beta2 0.95 --seed 1234
    --log-interval 10 --eval-interval 1000 --eval-iters 20 --save-interval 1000
)
REWEIGHT_ARGS=(
    --sample-reweight-strategy linupper --sample-reweight-r 0.4
    --sample-reweight-warmup-iters 1000
)
