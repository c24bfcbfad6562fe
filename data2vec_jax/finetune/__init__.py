"""Fine-tuning and GLUE evaluation: the yardstick every text ablation of the paper is measured with.

finetune.py -> grid.run_finetuning (one run, or tasks x lrs x seeds and their summary) ->
loop.finetune_and_evaluate (one run: starting_point -> data -> state -> step -> dev evaluations).
The paper's per-task recipe is in recipes; the heads (sentence and token classifiers) in model,
with parity against transformers; HF export/import in hf_io. See README.md, "Fine-tuning and
GLUE", and docs/reference/finetuning_reference.md.
"""
