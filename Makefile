# Set-up is part of every target: a fresh machine needs only Python 3.11 and `make`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo sweep-demo small-experiment test test-fast bench-cpu bench-gpu clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# The main job on an embedded default: tiny data2vec pretraining on an offline corpus, then
# fine-tuning the result and the same model from random weights on an offline task.
demo: $(STAMP)
	$(BIN)/python train.py --config configs/demo.py --workdir demo_out
	$(BIN)/python finetune.py --config configs/finetune_demo.py --workdir demo_out/finetune

# An ablation sweep offline: K in {1, 2, 4}, each pretrained as in `demo` and fine-tuned on its task.
sweep-demo: $(STAMP)
	$(BIN)/python sweep.py --config configs/sweeps/demo_top_k.py --workdir demo_sweep

# Does pretraining transfer? Issue 29's experiment on 2 CPU cores (docs/small_experiment.md):
# data2vec v1, MLM and data2vec 2.0 pretrained 15 minutes each on the stdlib docstring corpus,
# then fine-tuned and probed on two held-out tasks; report in small_experiment/report.md.
small-experiment: $(STAMP)
	$(BIN)/python -m data2vec_jax.transfer --workdir small_experiment

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q -m "not slow" tests

bench-cpu: $(STAMP)
	$(BIN)/python bench/bench_train_step.py
	$(BIN)/python bench/bench_encode.py
	$(BIN)/python bench/bench_input_pipeline.py

bench-gpu: $(STAMP)
	$(BIN)/python bench/bench_gpu.py

clean:
	rm -rf demo_out demo_sweep .pytest_cache
