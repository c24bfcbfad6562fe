"""The offline demo's fine-tuning half: does pretraining help? (`make demo`, after train.py).

  python finetune.py --config configs/finetune_demo.py --workdir demo_out/finetune

Fine-tunes the demo's pretrained model (`demo_out`, train.py's workdir: its newest checkpoint's
student and its sentencepiece vocabulary) and, with the same recipe and budget, the same
architecture from random weights, on a small offline task built from the demo corpus
(`data2vec_jax/finetune/demo_task.py`: which part of the Python reference manual a sentence is
from; 300 labelled sentences, 3 classes). The recipe is the GLUE one scaled to a 4-layer x 128
model: lr 1e-3 (small models take larger steps), 16 sentences per batch, 8 epochs, 6% warmup;
three seeds each (one run's best dev score varies by several points with the seed).

Outputs in the workdir: summary.md (both scores side by side), summary.json, dev_curves.png (dev
accuracy per epoch of both runs) and one run directory each (results.json, metrics.jsonl, ...).
"""

from data2vec_jax.configs import finetune


def get_config(arg: str | None = None):
  args = finetune.pretrain.parse_arg(arg, {"init": "demo_out"})
  c = finetune.get_config("task=python_topics")
  c.init = args["init"]
  c.data.source = "python_topics"
  c.optimizer.update(lr=1e-3, max_epochs=8)
  c.train.update(batch_size=16, eval_batch_size=64, log_every=20, export_model=False)
  c.grid.seeds = (1, 2, 3)
  c.grid.from_scratch = (False, True)
  return c
