# A tiny GPT that learns visibly in a few minutes on 2 CPU cores (the `make demo` model).
# Sourced by examples/pretrain_gpt_rw.sh; flags given to the launcher override these.
MODEL_ARGS=(
    --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128
    --max-position-embeddings 128 --position-embedding-type rope
    --normalization RMSNorm --swiglu --make-vocab-size-divisible-by 128
    --hidden-dropout 0.0 --attention-dropout 0.0
)
TRAIN_ARGS=(
    --micro-batch-size 8 --global-batch-size 32 --train-iters 150
    --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 15
    --weight-decay 0.1 --clip-grad 1.0 --adam-beta2 0.95 --seed 1234
    --log-interval 10 --eval-interval 100 --eval-iters 4 --save-interval 100
    # No DataLoader worker processes: on 2 cores they compete with the ranks (measured: 1.5x).
    --num-workers 0
)
# Burn-in and r scaled down with the run: 30 uniform steps (the paper: 1000 of ~20k), then
# linupper at r = 0.4 (the paper's setting for linupper). The evaluation harnesses set their own
# iterations, warm-up and burn-in (benchmarks/quality/).
REWEIGHT_ARGS=(
    --sample-reweight-strategy linupper --sample-reweight-r 0.4
    --sample-reweight-warmup-iters 30
)
