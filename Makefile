# Benchmarks of issue 8 (docs/performance.md). PY defaults to the project's virtualenv.
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python)

.PHONY: bench bench-quick bench-gpu

# every suite, full size (about 7 min on 2 CPU cores): table on stdout, JSON in bench-results/
bench:
	$(PY) -m gvae_dist.bench --out bench-results/bench.json

# CI-sized run of every suite (about a minute)
bench-quick:
	$(PY) -m gvae_dist.bench --quick --out bench-results/bench-quick.json

# gate + train step on one GPU with only PyTorch (< 5 min)
bench-gpu:
	$(PY) ops/bench/gpu_bench.py --out bench-results/gpu_bench.json
