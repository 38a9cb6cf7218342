"""Pairwise win rate of two policies (models or LoRA adapters) on the same prompts, judged in both orders.

    export OPENAI_API_KEY=...            # OPENAI_BASE_URL is honoured for other OpenAI-compatible endpoints
    python recipes/winrate.py --policy_a outputs/tinyllama-rloo-mars --policy_b outputs/tinyllama-rloo-baseline \
        --dataset_name alpaca_eval_prompts.jsonl --output_json outputs/winrate_mars_vs_baseline.json

Offline, a reward model judges instead: --judge reward_model --reward_model_name_or_path DIR.
All logic lives in `trl_mars.winrate`.
"""

from trl import TrlParser

from trl_mars.winrate import WinRateArguments, run_winrate

if __name__ == "__main__":
    (args,) = TrlParser((WinRateArguments,)).parse_args_and_config()
    run_winrate(args)
