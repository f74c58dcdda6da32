# GPT ~125M (GPT-2 small shape) on one or more 8-GPU nodes, data parallel only.
# Reweighting as the paper's 124M runs: quadratic, r = 1.0 after 1000 uniform burn-in steps.
# NOT RUN HERE: written for GPUs (bf16, Transformer Engine layers); the project's machines
# have none. Shapes and schedules follow common GPT-2-small practice; tune them for your data.
MODEL_ARGS=(
    --num-layers 12 --hidden-size 768 --num-attention-heads 12
    --seq-length 1024 --max-position-embeddings 1024 --position-embedding-type rope
    --normalization LayerNorm --hidden-dropout 0.0 --attention-dropout 0.0
    --init-method-std 0.02 --make-vocab-size-divisible-by 128
)
TRAIN_ARGS=(
    --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1
    --micro-batch-size 16 --global-batch-size 512 --train-iters 20000
    --lr 6e-4 --min-lr 6e-5 --lr-decay-style cosine --lr-warmup-iters 700
    --weight-decay 0.1 --clip-grad 1.0 --adam-beta2 0.95 --seed 1234
    --log-interval 10 --eval-interval 500 --eval-iters 20 --save-interval 1000
)
REWEIGHT_ARGS=(
    --sample-reweight-strategy quadratic --sample-reweight-r 1.0
    --sample-reweight-warmup-iters 1000
)
