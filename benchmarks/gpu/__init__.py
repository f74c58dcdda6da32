"""One lent GPU: make gpu-check (its tests, overhead and quality phases) and its report."""
