# A few iterations of a very small GPT: checks that a cluster, an image or a data path works, in
# well under a minute on CPUs (tests/test_slurm.py runs it through sbatch). Not a model to study.
# Saves every 10 of its 40 iterations, so an interrupted run has something to resume from.
MODEL_ARGS=(
    --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64
    --max-position-embeddings 64 --position-embedding-type rope
    --make-vocab-size-divisible-by 128
)
TRAIN_ARGS=(
    --micro-batch-size 2 --global-batch-size 8 --train-iters 40
    --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 2 --seed 1234
    --log-interval 1 --eval-interval 20 --eval-iters 1 --save-interval 10
)
REWEIGHT_ARGS=(
    --sample-reweight-strategy linupper --sample-reweight-r 0.4
    --sample-reweight-warmup-iters 2
)
