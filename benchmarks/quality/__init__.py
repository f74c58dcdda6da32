"""Does it help: the GPT sweep, the evaluation (rw_eval) and its analyses, the toy regression."""
