# tiny_cpu's GPT at about 4x the parameters: the scale point of benchmarks/quality/rw_eval.py.
# Sourced by examples/pretrain_gpt_rw.sh; flags given to the launcher override these.
# Parameters (vocab 4096, tied embeddings, SwiGLU with ffn 4h, biases): V*h + h + L*(16h^2 + 15h)
#   tiny_cpu  L4 h128: 1,580,672      small_cpu L5 h256: 6,310,912 (3.99x; 5.0x without embeddings)
# Only width and depth change (heads of 64 instead of 32); data, batch, optimizer and schedule are
# tiny_cpu's (the evaluation sets iterations, warm-up and burn-in for both), so a difference
# between the two sizes comes from the model.
MODEL_ARGS=(
    --num-layers 5 --hidden-size 256 --num-attention-heads 4 --seq-length 128
    --max-position-embeddings 128 --position-embedding-type rope
    --normalization RMSNorm --swiglu --make-vocab-size-divisible-by 128
    --hidden-dropout 0.0 --attention-dropout 0.0
)
TRAIN_ARGS=(
    --micro-batch-size 8 --global-batch-size 32 --train-iters 300
    --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 30
    --weight-decay 0.1 --clip-grad 1.0 --adam-beta2 0.95 --seed 1234
    --log-interval 10 --eval-interval 50 --eval-iters 4 --save-interval 100
)
REWEIGHT_ARGS=(
    --sample-reweight-strategy linupper --sample-reweight-r 0.4
    --sample-reweight-warmup-iters 50
)
