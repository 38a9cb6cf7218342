"""Pairwise win rate of two policies (models or LoRA adapters) on the same prompts, judged in both orders.

    export OPENAI_API_KEY=...            # OPENAI_BASE_URL is honoured for other OpenAI-compatible endpoints
    python recipes/winrate.py --policy_a outputs/tinyllama-rloo-mars --policy_b outputs/tinyllama-rloo-baseline \
        --dataset_name alpaca_eval_prompts.jsonl --output_json outputs/winrate_mars_vs_baseline.json

Offline judges: the packaged SmolLM2 model in this process (--judge local, --judge_model for another causal LM),
or a reward model (--judge reward_model --reward_model_name_or_path DIR). Any OpenAI-compatible server works as
the openai judge, e.g. a local `transformers serve` of the packaged model (it checks no key, but one must be set):

    transformers serve ~/.cache/trl_mars/packaged/SmolLM2-135M-Instruct-0.1.2 --port 8000 &
    OPENAI_API_KEY=unused python recipes/winrate.py --policy_a packaged:SmolLM2-135M-Instruct --policy_b DIR \
        --dataset_name prompts.jsonl --judge_base_url http://127.0.0.1:8000/v1 \
        --judge_model ~/.cache/trl_mars/packaged/SmolLM2-135M-Instruct-0.1.2

Verdicts are one letter (A or B); the summary reports how many answers named neither (the parse rate).
All logic lives in `trl_mars.align.winrate`.
"""

from trl import TrlParser

from trl_mars.align.winrate import WinRateArguments, run_winrate

if __name__ == "__main__":
    (args,) = TrlParser((WinRateArguments,)).parse_args_and_config()
    run_winrate(args)
