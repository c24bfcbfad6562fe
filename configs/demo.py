"""The offline demo: a tiny data2vec model pretrained for a few minutes on 2 CPU cores.

  python train.py --config configs/demo.py --workdir demo_out      (= `make demo`)
  python train.py --config configs/demo.py:recipe=data2vec2 --workdir demo_v2   (data2vec 2.0)

Corpus: English prose from the Python reference manual (`pydoc_data`, ships with CPython), with
a 4000-piece sentencepiece vocabulary trained on it at start-up; no network. The recipe is the
released one (span masking 0.35 x 4, K=top layers, per-layer LN targets, smooth-L1 beta 4) scaled
down: a short cosine schedule and a faster EMA anneal so the teacher moves within the run.
Every 20th distinct document of the corpus is held out: its loss is logged as valid/loss (validation
section). Outputs in the workdir: metrics.jsonl, tensorboard/, checkpoints/, model/ (a
data2vec-jax model directory) and training_curves.png.
"""

from data2vec_jax.configs import pretrain

# 4 layers x 128 for 128-token samples (positions: 128 + 2 for fairseq's offset).
MODEL = dict(
  num_layers=4,
  hidden_size=128,
  num_heads=4,
  intermediate_size=512,
  max_positions=130,
  dropout=0.1,
  attention_dropout=0.1,
)


def get_config(arg: str | None = None):
  args = pretrain.parse_arg(arg, {"steps": "200", "recipe": "release"})
  if args["recipe"] not in ("release", "data2vec2"):
    raise ValueError(f"demo recipe {args['recipe']!r}; expected 'release' or 'data2vec2'")
  c = pretrain.base_config(model="tiny", recipe="release")
  c.model.update(**MODEL)
  c.objective.average_top_k_layers = 3
  c.data.update(
    source="python_docs",
    sentencepiece_vocab_size=2048,
    tokens_per_sample=128,
    global_batch_size=32,
    prefetch=2,
  )
  steps = int(args["steps"])
  c.optimizer.update(lr=1e-3, warmup_steps=max(steps // 10, 1), max_steps=steps, clip_norm=1.0)
  c.ema.update(ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=steps)
  c.train.update(
    num_steps=steps,
    log_every=10,
    checkpoint_every=100,
    keep_checkpoints=2,
    collapse_check_after=steps // 2,
    min_target_var=0.1,
    min_pred_var=0.01,
  )
  # The held-out loss on the corpus's held-out documents (1 in 20 distinct ones, never trained
  # on): every 50 steps and at the last, on at most 4 batches (at these settings the whole split
  # is 27 sequences, one batch).
  c.validation.update(every=50, max_batches=4)
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  if args["recipe"] == "data2vec2":
    # data2vec 2.0 scaled down like the release demo: its targets, masking, clones and conv
    # decoder (narrower: 128 wide, kernel 5, 3 layers), 8 sentences x 4 clones per update
    # (the same 32 student rows as the v1 demo, on 52% of the tokens), the demo's optimiser.
    pretrain.data2vec2_recipe(c)
    c.objective.update(
      average_top_k_layers=4,
      clone_batch=4,
      decoder_dim=128,
      decoder_kernel=5,
      decoder_layers=3,
    )
    c.data.update(break_mode="complete_doc", global_batch_size=8)
    c.optimizer.update(lr=1e-3, warmup_steps=max(steps // 10, 1), max_steps=steps, clip_norm=1.0)
    c.ema.update(ema_decay=0.99, ema_end_decay=0.999, ema_anneal_end_step=steps)
    c.train.num_steps = steps
  return c
