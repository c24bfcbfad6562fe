"""Fine-tune a pretrained data2vec text model on a GLUE task (or a task of your own) and evaluate it.

  python finetune.py --config configs/finetune.py:task=rte --workdir runs/rte \
      --config.init=models/nlp_base.pt --config.data.path=glue_data
  python finetune.py --config configs/finetune.py:task=glue,grid=paper --workdir runs/glue \
      --config.init=runs/base --config.data.path=glue_data       # 8 tasks x 4 lrs x 5 seeds

Arguments after the colon: `task` (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; `glue` =
the paper's eight; or any name with `data.source=generic`, with `own=true` where the name is
close to a GLUE task's, e.g. `task=snli,own=true`) and `grid` (`none`: one run with the
task's yaml lr and seed 1; `paper`: lr in {1e-5, 2e-5, 3e-5, 4e-5} x seeds 1..5).

Values left None come from the task's recipe (`data2vec_jax/finetune/recipes.py`, the RoBERTa
fine-tuning yamls the paper uses): optimizer.lr, train.batch_size, optimizer.max_update,
optimizer.warmup_updates, data.regression_scale, data.eval_splits.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from data2vec_jax.configs import pretrain
from data2vec_jax.finetune import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = pretrain.parse_arg(arg, {"task": "rte", "grid": "none", "own": "false"})
  task, grid = args["task"], args["grid"]
  if args["own"] not in ("true", "false"):
    raise ValueError(f"own={args['own']!r}; expected 'true' or 'false'")
  own = args["own"] == "true"
  if own and task in [*recipes.GLUE_RECIPES, "glue"]:
    raise ValueError(f"own=true names a task of your own; {task!r} is GLUE's (drop own=true)")
  if not own:
    recipes.check_task_name(task)  # 'rtee' is a typo of 'rte', not a task of your own
  if grid not in ("none", "paper"):
    raise ValueError(f"grid={grid!r}; expected 'none' or 'paper'")
  c = ml_collections.ConfigDict()
  c.task = task
  # Weights to start from: a data2vec-jax model dir, a Hugging Face dir, a fairseq .pt, or a
  # pretraining workdir (its newest checkpoint).
  c.init = ""
  c.init_ema = False  # a pretraining workdir / fairseq .pt: the EMA teacher instead of the student
  # An HF init with token_type_embeddings rows >= 1 (type_vocab_size=2): drop them knowingly
  # (the encoder feeds token type 0 only), as convert_torch_weights.py --drop-token-type-rows.
  c.init_drop_token_type_rows = False
  c.init_classifier = False  # continue from the checkpoint's own classifier head (same labels)
  c.from_scratch = False  # the init's architecture and tokenizer, random weights (a baseline)
  c.eval_only = False  # score the init (with its classifier) on the dev splits; no training

  c.data = ml_collections.ConfigDict(
    {
      # glue_tsv: the GLUE download (glue_data/ with CoLA/, RTE/, ...) or one task's folder;
      # tfds: glue/<task> already prepared in data.tfds_data_dir; fairseq_bin: fairseq's
      # preprocessed <TASK>-bin folders (or their parent); generic: your TSV/JSONL files.
      "source": "glue_tsv",
      "path": "",
      "tfds_name": "glue",
      "tfds_data_dir": "",
      # generic source: <path>/train.<format> and <path>/<split>.<format> for each eval split.
      "format": "tsv",  # tsv (header row) | jsonl
      "text_columns": ("sentence1", "sentence2"),
      "label_column": "label",
      "label_names": (),  # () = the sorted labels of the train split; or "pos,neg,neu"
      "regression": False,
      "metric": "",  # generic: accuracy | mcc | accuracy_f1 | pearson_spearman ('' = accuracy)
      "skip_malformed": False,
      # Over-long examples (> the model's positions): drop | truncate | error.
      "train_too_long": "drop",
      "eval_too_long": "error",
      "regression_scale": placeholder(float),
      "eval_splits": placeholder(tuple),
    }
  )
  # Tokenizer of the pretrained model. auto: found next to `init` (a pretraining workdir's data
  # config, or tokenizer files in the model dir / its parent); else set kind and its files.
  c.tokenizer = ml_collections.ConfigDict(
    {
      "kind": "auto",  # auto | sentencepiece | bpe | none (fairseq_bin data holds ids)
      "sentencepiece_model": "",
      "vocab_json": "",
      "merges_txt": "",
      "dict_txt": "",
    }
  )
  c.model = ml_collections.ConfigDict(
    {
      "dropout": 0.1,
      "attention_dropout": 0.1,
      "classifier_dropout": 0.0,  # fairseq pooler_dropout (HF classifier_dropout)
      "head_init": "torch_default",  # torch_default (fairseq) | bert (HF: N(0, 0.02), zero bias)
      "dtype": "float32",  # compute dtype: float32 | bfloat16 (parameters stay float32)
      # Blocks per iteration of the scan over the blocks: 'all' (unrolled, as pretraining's
      # execution.scan_unroll default) or an int (1: one scanned block, faster compiles).
      "scan_unroll": "all",
    }
  )
  c.optimizer = ml_collections.ConfigDict(
    {
      "lr": placeholder(float),
      "max_update": placeholder(int),  # the linear decay reaches 0 here
      "warmup_updates": placeholder(int),
      "max_epochs": recipes.MAX_EPOCHS,
      "b1": 0.9,
      "b2": 0.98,
      "eps": 1e-6,
      "weight_decay": 0.1,
      "clip_norm": 0.0,
    }
  )
  c.train = ml_collections.ConfigDict(
    {
      "batch_size": placeholder(int),  # sentences per update
      "eval_batch_size": 64,
      "seed": 1,
      "eval_every": 0,  # 0 = at the end of every epoch; N = every N updates (and the last)
      "checkpoint_every": 0,  # extra checkpoints every N updates (0: at evaluations only)
      "keep_checkpoints": 1,
      "log_every": 50,
      "report": "best",  # best (over evaluations; RoBERTa's early stopping) | last
      "select_by": "score",  # score (the task's GLUE number) | accuracy (fairseq's glue_lr.py)
      "export_model": True,  # <workdir>/model: the reported evaluation's weights
      "export_hf": False,  # and <workdir>/hf: the same as an HF sequence-classifier directory
      "tensorboard": True,
      # JAX's persistent compilation cache (data2vec_jax/speed/compile_cache.py): 'auto' =
      # $JAX_COMPILATION_CACHE_DIR or <workdir>/jax_cache; 'none'; or a directory.
      "compilation_cache": "auto",
    }
  )
  c.grid = ml_collections.ConfigDict(
    {
      "tasks": (),  # () = (task,)
      "lrs": (),  # () = the task's yaml lr
      "seeds": (),  # () = (train.seed,)
      "from_scratch": (),  # () = (from_scratch,); (False, True): pretrained vs random weights
      "lr_choice": "global",  # global: one lr for all tasks (paper) | per_task (glue_lr.py)
    }
  )
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

  if task == "glue":
    c.grid.tasks = recipes.PAPER_TASKS
  elif task in recipes.GLUE_RECIPES:
    recipe = recipes.GLUE_RECIPES[task]
    c.optimizer.lr = recipe.lr
    c.optimizer.max_update = recipe.max_update
    c.optimizer.warmup_updates = recipe.warmup_updates
    c.train.batch_size = recipe.batch_size
    c.data.regression_scale = recipe.regression_scale
    c.data.eval_splits = recipe.eval_splits
  else:  # a task of your own
    c.data.source = "generic"
  if grid == "paper":
    c.grid.lrs = recipes.PAPER_LRS
    c.grid.seeds = recipes.PAPER_SEEDS
  return c
