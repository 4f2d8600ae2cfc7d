"""A synthetic corporate-lending portfolio, for the demo, tests and benchmarks."""
