"""Pretraining: config -> recipe and plan, the sharded state and jitted step, health guards,
validation, plots, the loop (`loop.train_and_evaluate`), and what reads a pretraining workdir
(`export`: a model directory from a checkpoint; `workdir_tokenizer`). Checkpoints, optimizer,
sharding, metrics and preemption are shared with fine-tuning in `runtime/`."""
