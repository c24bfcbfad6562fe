"""Pretraining for the small transfer experiment (`make small-experiment`, docs/small_experiment.md).

  python train.py --config configs/small_experiment.py:recipe=release,steps=3000,data=DIR \\
      --workdir small_experiment/pretrain/release

One small model (4 layers x 128, 8k sentencepiece vocabulary, 128-token samples) pretrained on
the standard-library docstring corpus (`data2vec_jax/data/stdlib_corpus.py`, `--packages dev`:
2.7M words), binarized once into DIR by the experiment's prepare stage (DIR/bin/train,
DIR/valid_bin/train; DIR defaults to small_experiment/data). The three recipes share the model,
the corpus, the tokenizer and the optimiser (the demo's, scaled to the run: AdamW lr 1e-3, cosine
with 10% warmup, clip 1), so what differs is the objective and its masking:

  release    data2vec v1 as released (span masking 0.35 x 4, K=3 top layers, LN targets, smooth L1)
  roberta    the MLM baseline of the paper's Table 4 (BERT masking 15% 80/10/10)
  data2vec2  data2vec 2.0 (4 clones per sentence, 48% masked and dropped, conv decoder 128 x 5 x 3,
             IN targets from every block), 8 sentences x 4 clones per update as in the demo

`steps` is what the experiment calibrates for equal wall time (transfer/pretrain.py); checkpoints are
kept at every `checkpoint_every` steps, all of them: the evaluation reads each.
"""

from data2vec_jax.configs import demo, pretrain

RECIPES = ("release", "roberta", "data2vec2")
DEFAULT_DATA = "small_experiment/data"


def get_config(arg: str | None = None):
  # data: where `python -m data2vec_jax.transfer --workdir W --stages prepare` wrote W/data (the
  # default: make small-experiment's workdir, relative to the checkout).
  args = pretrain.parse_arg(
    arg,
    {"recipe": "release", "steps": "3000", "checkpoint_every": "500", "data": DEFAULT_DATA},
  )
  recipe = args["recipe"]
  if recipe not in RECIPES:
    raise ValueError(f"small_experiment recipe {recipe!r}; expected one of {RECIPES}")
  steps, every = int(args["steps"]), int(args["checkpoint_every"])
  c = pretrain.base_config(model="tiny", recipe=recipe)
  c.model.update(**demo.MODEL)  # the demo's model
  c.data.update(
    source="fairseq_bin",
    path=f"{args['data']}/bin/train",
    tokens_per_sample=128,
    global_batch_size=32,
    prefetch=2,
  )
  c.validation.update(path=f"{args['data']}/valid_bin/train", every=every, max_batches=8)
  c.optimizer.update(
    lr=1e-3, schedule="cosine", warmup_steps=max(steps // 10, 1), max_steps=steps, clip_norm=1.0
  )
  c.ema.update(ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=steps)
  c.train.update(
    num_steps=steps,
    log_every=50,
    checkpoint_every=every,
    keep_checkpoints=steps // every + 1,  # all of them
    collapse_check_after=steps // 2,
    min_target_var=0.1 if recipe == "release" else 0.0,
    min_pred_var=0.01 if recipe == "release" else 0.0,
  )
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  if recipe == "release":
    c.objective.average_top_k_layers = 3
  if recipe == "data2vec2":
    c.objective.update(
      average_top_k_layers=4, clone_batch=4, decoder_dim=128, decoder_kernel=5, decoder_layers=3
    )
    c.data.update(global_batch_size=8)
  return c
