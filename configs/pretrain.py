"""data2vec text pretraining configs.

Usage:
  python train.py --config configs/pretrain.py:model=base,recipe=release --workdir /ckpt/d2v

`arg` is a comma-separated list of key=value:
  model  = tiny | small | base | large                     (default base)
  recipe = release | paper | roberta | data2vec2           (default release)
    release: fairseq examples/data2vec/config/text/pretraining/base.yaml (the published code's
             recipe; = the paper's "+ wav2vec 2.0 masking" row of Table 4: span masking p=0.35
             len 4, cosine LR with 10k warmup, EMA 0.999 -> 0.9999 over 300k updates).
    paper:   the paper's main data2vec row of Table 4 (§4.3): BERT masking 15% (80/10/10),
             tri-stage LR 5/80/15 %, EMA tau_n = 100k.
    roberta: the paper's retrained RoBERTa baseline of Table 4 (MLM, BERT masking, same
             optimisation as the paper row), for same-setup comparisons.
    data2vec2: data2vec 2.0 (fairseq examples/data2vec/config/v2/base_text_only_task.yaml; with
             model=large, large_text_only_task.yaml): 8 clones per sentence, 48% masked (50%
             large) and dropped from the student, conv decoder, targets from every block (IN
             per layer; large: LN per layer then IN), MSE summed over dims, EMA 0.9999 ->
             0.99999 over 100k, lr 2e-4 (1e-4 large), cosine with 4k warmup, clip 1, 64
             sequences per update (docs/reference/data2vec2_text_reference.md). Ablation axes:
             --config.objective.{clone_batch, mask_prob, decoder_layers, decoder_kernel,
             decoder_dim, average_top_k_layers, ...}.

Every switch keeps fairseq's option name (average_top_k_layers, layer_norm_target_layer,
loss_beta, ema_decay, ...), so a fairseq yaml maps key by key. Teacher input defaults to the
paper's (unmasked sentence); `--config.objective.teacher_input=masked_only` reproduces the
published code (docs/reference/data2vec_text_reference.md §3.3, fairseq issue #4881).
"""

from __future__ import annotations

import ml_collections

MODEL_SIZES = {
  # layers, width, heads, ffn
  "tiny": dict(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=256),
  "small": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
  "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
  "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}
RECIPES = ("release", "paper", "roberta", "data2vec2")


def parse_arg(arg: str | None, defaults: dict[str, str]) -> dict[str, str]:
  """'a=1,b=x' -> {'a': '1', 'b': 'x'} over `defaults`; unknown keys are an error."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config arg {item!r} is not key=value (known keys: {sorted(defaults)})")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    values[key] = value
  return values


def base_config(model: str = "base", recipe: str = "release") -> ml_collections.ConfigDict:
  """The full config tree with the `release` recipe, then `recipe` applied on top."""
  if model not in MODEL_SIZES:
    raise ValueError(f"unknown model size {model!r}; known: {sorted(MODEL_SIZES)}")
  if recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; known: {RECIPES}")
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(
    dict(
      vocab_size=-1,  # -1: from the tokenizer (50265 for the released BPE + <mask>)
      max_positions=514,
      pad_id=1,
      layer_norm_eps=1e-5,
      dropout=0.1,
      attention_dropout=0.1,
      activation_dropout=0.0,
      dtype="float32",
      param_dtype="float32",
      **MODEL_SIZES[model],
    )
  )

  c.objective = ml_collections.ConfigDict(
    dict(
      kind="data2vec",
      average_top_k_layers=10 if model in ("base", "small", "tiny") else 20,
      layer_norm_target_layer=True,
      instance_norm_target_layer=False,
      batch_norm_target_layer=False,
      layer_norm_targets=False,
      instance_norm_targets=False,
      target_type="ffn",
      head_layers=2,
      loss_beta=4.0,
      loss_scale=1.0,
      teacher_input="unmasked",
      mask_id=-1,
      # data2vec 2.0 only (recipe=data2vec2; objective/data2vec2_config.py): masking on device,
      # the clones and the conv decoder, fairseq's names and text-yaml values.
      clone_batch=8,
      mask_prob=0.48,
      mask_noise_std=0.01,
      decoder_dim=768,
      decoder_kernel=9,
      decoder_layers=5,
      decoder_groups=1,
      decoder_residual=False,
      projection_layers=2,
      projection_ratio=2.0,
      decoder_input_dropout=0.1,
    )
  )
  c.objective.average_top_k_layers = min(
    c.objective.average_top_k_layers, MODEL_SIZES[model]["num_layers"]
  )

  c.ema = ml_collections.ConfigDict(
    dict(
      ema_decay=0.999,
      ema_end_decay=0.9999,
      ema_anneal_end_step=300_000,
      ema_transformer_layers_only=True,
    )
  )

  c.masking = ml_collections.ConfigDict(
    dict(
      mask_prob=0.35,
      mask_multiple_length=4,
      mask_stdev=0.0,
      leave_unmasked_prob=0.0,
      random_token_prob=0.0,
    )
  )

  c.optimizer = ml_collections.ConfigDict(
    dict(
      lr=2e-4,
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      weight_decay=0.01,
      decay_bias_and_norm=True,
      clip_norm=5.0,
      schedule="cosine",
      warmup_steps=10_000,
      max_steps=1_000_000,
      min_lr=0.0,
    )
  )

  c.data = ml_collections.ConfigDict(
    dict(
      source="fairseq_bin",  # text | tfds | fairseq_bin | python_docs
      path="",  # text file(s) (glob) or binarized prefix (no .bin/.idx)
      tfds_name="",
      tfds_split="train",
      tfds_data_dir="",
      text_feature="text",
      tokenizer="bpe",  # bpe (vocab.json + merges.txt) | sentencepiece
      vocab_json="",
      merges_txt="",
      dict_txt="",
      sentencepiece_model="",
      sentencepiece_vocab_size=8000,
      tokens_per_sample=512,
      break_mode="complete_doc",
      global_batch_size=256,  # sequences per update over all hosts (paper: 256 x 512)
      seed=1,
      pad_to="max",
      pad_multiple=64,
      shuffle=True,
      prefetch=2,  # batches built ahead (per worker, with workers)
      # Worker processes that build the batches (data2vec_jax/data/workers.py): 0 = one thread
      # in this process; -1 = auto (0 when JAX runs on the CPU, else a worker per 2 host cores).
      workers=-1,
    )
  )

  # Held-out loss during pretraining (fairseq's valid_subset; data2vec_jax/train/validation.py):
  # the training loss, dropout off, current EMA teacher, masks drawn once from `seed`, logged as
  # valid/loss, valid/target_var, ... every `every` steps and at the last step.
  c.validation = ml_collections.ConfigDict(
    dict(
      path="",  # fairseq_bin: the valid prefix (data/bin/valid); text: held-out text file(s)
      tfds_split="",  # tfds: the held-out split, e.g. 'validation'
      every=0,  # evaluate every N steps (and at the last step); 0 = off
      max_batches=50,  # at most this many global batches of the split, in file order; 0 = all
      seed=1,  # the held-out masks' seed: the same masks at every evaluation
    )
  )

  c.train = ml_collections.ConfigDict(
    dict(
      num_steps=1_000_000,
      seed=1,
      log_every=100,
      checkpoint_every=5_000,
      keep_checkpoints=3,
      async_checkpoint=True,
      export_model=True,
      plot=True,
      tensorboard=True,
      # JAX's persistent compilation cache (data2vec_jax/speed/compile_cache.py): 'auto' =
      # $JAX_COMPILATION_CACHE_DIR or <workdir>/jax_cache; 'none'; or a directory (gs:// too).
      compilation_cache="auto",
      # Compile the step for every shape of the next N steps before the first one (token
      # packing's capacities; data2vec_jax/train/precompile.py), `compile_threads` at a time
      # (0: one per 4 cores, at least 1, at most 8); 0 steps: compile each shape when first met.
      precompile_steps=100_000,
      compile_threads=0,
      # Health guards (data2vec_jax/train/health.py), checked on every step before each save: stop
      # on a NaN/Inf loss or grad norm, or one over explode_factor x its running median over
      # explode_window steps (0 = NaN/Inf only); and on a collapse: a target/prediction
      # variance under its floor and under collapse_fraction of the run's peak.
      nan_guard=True,
      explode_factor=100.0,
      explode_window=100,
      collapse_check_after=5_000,
      min_target_var=0.1,
      min_pred_var=0.01,
      collapse_fraction=0.1,
      peak_flops_per_device=0.0,
    )
  )  # 0: look up from the device kind (H100, TPU v4, ...)

  # How the step runs: speed only, the loss is the same (data2vec_jax/objective/execution.py; tests prove
  # each technique equal to the plain path; measurements in bench/README.md).
  c.execution = ml_collections.ConfigDict(
    dict(
      # Head and loss on each row's loss positions only, gathered into K slots: 'auto' = the
      # masker's per-row bound, 'all' = every position (no gathering), or an int K.
      head_positions="auto",
      # With gathered heads the student's (and, with per-position targets, the teacher's) last
      # block also runs only at those slots.
      prune_last_block=True,
      # A row beyond K: 'fallback' (exact, a lax.cond), 'error' (no fallback compiled; every host
      # batch checked first), 'auto' = 'error' exactly when K is the masker's guaranteed bound.
      head_overflow="auto",
      # Token packing: the encoders run on the real tokens only (packing.py), in one of
      # `pack_buckets` static capacities per sequence length (each compiles once); batches
      # without pads run unpacked.
      pack_tokens=True,
      pack_buckets=16,
      micro_batches=1,  # gradient accumulation: same update as one large batch
      # 'all': fully unrolled blocks, a faster step for a longer compile than one scanned block
      # (1; measured in bench/README.md).
      scan_unroll="all",
      remat_policy="none",
      attention_impl="auto",
      # data2vec2: the student's blocks run on the kept tokens only (fairseq's); False encodes
      # every position with the masked keys hidden (the plain form, same values).
      drop_masked_tokens=True,
    ),
    # Not type safe: head_positions and scan_unroll take a name or an int.
    type_safe=False,
  )

  # data x fsdp x tensor devices (data2vec_jax/runtime/sharding.py). slices > 1: a multi-slice TPU
  # job whose data axis spans the slices over DCN (data = slices x data within a slice).
  # Default: data parallel over every device: it runs on any host, and every model here fits a
  # 16 GiB v5e chip that way at the paper's batch (compiled for v5e-256: v1 large 9.6 GiB per
  # chip, base 3.1; bench/README.md "Before you rent a pod"). On a pod, shard the state too:
  # with one sequence per chip the step is bound by every chip's AdamW + EMA pass over the whole
  # replicated state, and --config.mesh.data=16 --config.mesh.fsdp=16 on 256 chips cuts the
  # ESTIMATED step from 18 to 6 ms (base) and 37 to 10 ms (large) at the same batch (a roofline
  # estimate from the compiled program, not measured on a TPU). Batches smaller than the chips
  # (data2vec2's 64 sentences) need tensor parallelism: --config.mesh.data=64
  # --config.mesh.tensor=4 on 256 chips (the batch splits over data x fsdp only).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, slices=1))
  c.distributed = False  # True on multi-host: calls jax.distributed.initialize()
  # Where the processes meet. Unset (""/-1): JAX detects them (Cloud TPU, SLURM, Open MPI,
  # Kubernetes, JAX_COORDINATOR_ADDRESS). Set all three to launch processes by hand, e.g. on one
  # machine: coordinator_address="localhost:12345", num_processes=2, process_id=0 / 1.
  c.cluster = ml_collections.ConfigDict(
    dict(coordinator_address="", num_processes=-1, process_id=-1)
  )

  if recipe in ("paper", "roberta"):
    c.masking.update(
      mask_prob=0.15, mask_multiple_length=1, leave_unmasked_prob=0.1, random_token_prob=0.1
    )
    c.optimizer.update(schedule="tri_stage")
    c.ema.ema_anneal_end_step = 100_000
  if recipe == "roberta":
    c.objective.kind = "mlm"
    c.train.min_target_var = 0.0
    c.train.min_pred_var = 0.0
  if recipe == "data2vec2":
    data2vec2_recipe(c, large=model == "large")
  return c


def data2vec2_recipe(c: ml_collections.ConfigDict, large: bool = False) -> None:
  """data2vec 2.0's text yamls applied to `c` in place (see the module docstring)."""
  mask_prob = 0.5 if large else 0.48
  c.objective.update(
    kind="data2vec2",
    average_top_k_layers=c.model.num_layers,  # every block
    instance_norm_target_layer=not large,
    layer_norm_target_layer=large,
    instance_norm_targets=large,
    loss_beta=0.0,
    loss_scale=1.0,
    clone_batch=8,
    mask_prob=mask_prob,
  )
  # v2 masks on the device (objective.mask_prob); the host masker's output is not read.
  c.masking.update(mask_prob=mask_prob, mask_multiple_length=1)
  c.ema.update(ema_decay=0.9999, ema_end_decay=0.99999, ema_anneal_end_step=100_000)
  c.optimizer.update(
    lr=1e-4 if large else 2e-4,
    schedule="cosine",
    warmup_steps=4_000,
    max_steps=600_000 if large else 1_000_000,
    clip_norm=1.0,
    # fairseq's no-decay overrides for biases and norms are dead code: it decays everything
    # (docs/reference/data2vec2_text_reference.md §8.2, §14.1).
    decay_bias_and_norm=True,
  )
  c.data.update(break_mode="none", global_batch_size=64)
  c.train.num_steps = c.optimizer.max_steps


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, {"model": "base", "recipe": "release"})
  return base_config(args["model"], args["recipe"])
