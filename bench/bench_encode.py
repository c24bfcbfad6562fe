"""Feature extraction: deterministic encoder forward, data2vec-jax vs transformers, same shapes.

- JAX: `jax.jit` of `data2vec_jax.model.encoder.Encoder(cfg).apply({'params': p}, ids,
  deterministic=True).last_hidden_state` (attention_impl 'auto' = XLA's
  `dot_product_attention` on CPU; `--attention_impl reference` for the explicit softmax).
- PyTorch: `transformers.Data2VecTextModel(add_pooling_layer=False).eval()` under
  `torch.inference_mode()` (default SDPA attention), returning `last_hidden_state`.

Same protocol as bench_train_step.py: per config, `--rounds` rounds of one subprocess per
framework (order alternating), `--warmup` untimed calls, `--steps` timed calls; median time,
tokens/s over real (non-pad) tokens, ratio JAX/PyTorch, peak RSS per worker.

    python bench/bench_encode.py --configs tiny,small,base [--batch 8] [--seq 128] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def model_kwargs(config: str, attention_impl: str = "auto") -> dict:
  return dict(
    common.CONFIGS[config],
    max_positions=514,
    pad_id=1,
    layer_norm_eps=1e-5,
    attention_impl=attention_impl,
  )


def jax_worker(args) -> dict:
  import jax

  from data2vec_jax.model.config import EncoderConfig
  from data2vec_jax.model.encoder import Encoder, init_params

  rss_base = common.current_rss_mib()
  cfg = EncoderConfig(**model_kwargs(args.config, args.attention_impl))
  params = init_params(cfg, jax.random.PRNGKey(0))
  encode = jax.jit(
    lambda p, ids: Encoder(cfg).apply({"params": p}, ids, deterministic=True).last_hidden_state
  )
  host = [
    common.make_batch(args.batch, args.seq, cfg.vocab_size, seed=s, full_rows=args.full_rows)
    for s in range(4)
  ]
  ids = [jax.device_put(b["target"]) for b in host]
  holder = {"i": 0}

  def one():
    out = encode(params, ids[holder["i"] % len(ids)])
    holder["i"] += 1
    out.block_until_ready()

  warm = common.timed_loop(one, args.warmup)
  times = common.timed_loop(one, args.steps)
  return {
    "framework": "jax",
    "jax": jax.__version__,
    "first_call_s": warm[0],
    "times_s": times,
    "real_tokens": common.real_tokens(host[0]),
    "rss_base_mib": rss_base,
    "peak_rss_mib": common.peak_rss_mib(),
    "attention_impl": args.attention_impl,
  }


def torch_worker(args) -> dict:
  import torch
  import transformers

  torch.set_num_threads(args.threads)
  rss_base = common.current_rss_mib()
  kw = model_kwargs(args.config)
  hf_config = transformers.Data2VecTextConfig(
    vocab_size=kw["vocab_size"],
    hidden_size=kw["hidden_size"],
    num_hidden_layers=kw["num_layers"],
    num_attention_heads=kw["num_heads"],
    intermediate_size=kw["intermediate_size"],
    hidden_act="gelu",
    max_position_embeddings=kw["max_positions"],
    type_vocab_size=1,
    layer_norm_eps=kw["layer_norm_eps"],
    pad_token_id=kw["pad_id"],
  )
  model = transformers.Data2VecTextModel(hf_config, add_pooling_layer=False).eval()
  host = [
    common.make_batch(args.batch, args.seq, kw["vocab_size"], seed=s, full_rows=args.full_rows)
    for s in range(4)
  ]
  batches = [
    (torch.from_numpy(b["target"]).long(), torch.from_numpy(b["target"] != kw["pad_id"]).long())
    for b in host
  ]
  holder = {"i": 0}

  def one():
    ids, attn = batches[holder["i"] % len(batches)]
    holder["i"] += 1
    with torch.inference_mode():
      model(input_ids=ids, attention_mask=attn).last_hidden_state

  warm = common.timed_loop(one, args.warmup)
  times = common.timed_loop(one, args.steps)
  return {
    "framework": "torch",
    "torch": torch.__version__,
    "attn_implementation": getattr(model.config, "_attn_implementation", None),
    "threads": torch.get_num_threads(),
    "first_call_s": warm[0],
    "times_s": times,
    "real_tokens": common.real_tokens(host[0]),
    "rss_base_mib": rss_base,
    "peak_rss_mib": common.peak_rss_mib(),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="tiny,small,base")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--attention_impl", default="auto", choices=["auto", "xla", "reference"])
  p.add_argument("--full_rows", action="store_true")
  common.add_protocol_flags(p, timeout=1200)
  args = common.parse_protocol_args(p, argv)
  if args.worker:
    common.emit((jax_worker if args.worker == "jax" else torch_worker)(args))
    return 0

  load_before = common.load_avg()
  results, rows = [], []
  for config in args.configs.split(","):
    worker_args = ["--config", config, "--batch", str(args.batch), "--seq", str(args.seq)]
    worker_args += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    worker_args += ["--threads", str(args.threads), "--attention_impl", args.attention_impl]
    worker_args += ["--pin_cores", str(args.pin_cores)] + ["--full_rows"] * args.full_rows
    runs, errors = common.run_rounds(
      os.path.abspath(__file__),
      config,
      ("jax", "torch"),
      args.rounds,
      worker_args,
      timeout=args.timeout,
      malloc=args.malloc,
    )
    entry = {
      "config": config,
      "model": model_kwargs(config, args.attention_impl),
      "batch": args.batch,
      "seq": args.seq,
      "errors": errors,
    }
    # Token counts: the workers cycle over 4 batches; use the mean real-token count of those.
    host = [
      common.make_batch(
        args.batch, args.seq, common.CONFIGS[config]["vocab_size"], seed=s, full_rows=args.full_rows
      )
      for s in range(4)
    ]
    tokens = sum(common.real_tokens(b) for b in host) / len(host)
    for fw, rs in runs.items():
      if rs:
        times = [t for x in rs for t in x["times_s"]]
        med = common.median(times)
        entry[fw] = {
          "median_s": med,
          "tokens_per_s": tokens / med,
          "round_medians_s": [common.median(x["times_s"]) for x in rs],
          "first_call_s": common.median([x["first_call_s"] for x in rs]),
          "peak_rss_mib": max(x["peak_rss_mib"] for x in rs),
          "worker_info": {k: v for k, v in rs[0].items() if k not in ("times_s", "real_tokens")},
        }
    if "jax" in entry and "torch" in entry:
      entry["ratio_jax_over_torch"] = entry["jax"]["tokens_per_s"] / entry["torch"]["tokens_per_s"]
    results.append(entry)
    rows.append(
      {
        "config": config,
        "BxT": f"{args.batch}x{args.seq}",
        "jax_s": entry.get("jax", {}).get("median_s"),
        "jax_tok/s": entry.get("jax", {}).get("tokens_per_s"),
        "torch_s": entry.get("torch", {}).get("median_s"),
        "torch_tok/s": entry.get("torch", {}).get("tokens_per_s"),
        "jax/torch": entry.get("ratio_jax_over_torch"),
      }
    )
  print()
  common.print_table(rows, list(rows[0].keys()))
  if not args.no_record:
    common.append_result(
      "encode",
      common.cpu_device_label(
        "JAX CPU backend vs PyTorch eager CPU inference_mode", args.threads, args.pin_cores
      ),
      results,
      load_avg_before=load_before,
      note=args.note,
      protocol={
        "rounds": args.rounds,
        "warmup": args.warmup,
        "steps": args.steps,
        "interleaving": "one subprocess per framework per round, order alternating",
        "attention_impl": args.attention_impl,
        "threads": args.threads,
        "pin_cores": args.pin_cores,
        "malloc": args.malloc,
      },
      versions=common.library_versions("jax", "jaxlib", "flax", "torch", "transformers"),
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
