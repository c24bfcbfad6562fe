"""The offline demo sweep: K in {1, 2, 4} on the demo model and the demo's offline task.

  python sweep.py --config configs/sweeps/demo_top_k.py --workdir demo_sweep   (= make sweep-demo)

Each cell pretrains configs/demo.py (4 layers x 128, 200 updates on the Python reference manual)
with K top layers averaged into the target, then fine-tunes it on python_topics
(configs/finetune_demo.py: 300 labelled sentences, 3 classes, seeds 1..3, pretrained weights only).
A check that the sweep machinery runs from a fresh machine, not a finding about K: at this scale
pretraining itself barely helps (README, "What `make demo` does").

Argument: values (';'-separated K values, default 1;2;4; each at most the demo's 4 layers).
"""

import ml_collections

from data2vec_jax.configs import pretrain


def get_config(arg=None):
  args = pretrain.parse_arg(arg, {"values": "1;2;4"})
  c = ml_collections.ConfigDict()
  c.name = "demo_top_k"
  c.description = "the offline demo: K top layers averaged into the target"
  c.axis = "objective.average_top_k_layers"
  c.label = "K"
  c.axis_values = tuple(v for v in args["values"].split(";") if v)
  c.pretrain = ml_collections.ConfigDict({"config": "configs/demo.py", "args": "", "overrides": ()})
  c.finetune = ml_collections.ConfigDict(
    {"config": "configs/finetune_demo.py", "overrides": ("grid.from_scratch=(False,)",)}
  )
  c.paper_rows = ml_collections.ConfigDict()
  c.paper_note = "none for this task (an offline stand-in for GLUE)."
  return c
