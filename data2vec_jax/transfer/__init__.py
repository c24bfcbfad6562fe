"""Does pretraining transfer? The small experiment that two CPU cores run (issue 29).

  python -m data2vec_jax.transfer --workdir small_experiment          (= make small-experiment)

Stages, each skipped when its outputs say it finished (a re-run resumes):

  prepare    the standard-library corpus, its held-out tasks and the binarized corpus (prepare.py)
  calibrate  each recipe's steps per second on this machine, for equal wall time (pretrain.py)
  pretrain   data2vec v1, the MLM baseline and data2vec 2.0, each for the same minutes, with
             checkpoints along the way (configs/small_experiment.py)
  evaluate   fine-tuning and a linear probe from checkpoints and from random weights, on both
             tasks, every label budget, three seeds (evaluate.py, probe.py)
  baseline   TF-IDF + logistic regression on the same labels (finetune/bow_baseline.py)
  report     report.md and the plots (report.py)

The layout of the workdir is `plan.Plan`'s.
"""
