"""Cost of the method: hook and weights micro-benchmarks, the real-loop overhead, the scaling model."""
