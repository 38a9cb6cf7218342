"""Score a reward model on preference pairs: accuracy, mean margin, margin SNR, per subset, RewardBench sections.

    python recipes/eval_rm.py --model_name_or_path outputs/mars-rm-minilm-embedded \
        --dataset_name allenai/reward-bench --output_json rewardbench.json

`--dataset_name` is a Hub id (allenai/reward-bench: split "filtered") or a local .jsonl file with prompt, chosen,
rejected and optionally subset fields. Pairs are encoded exactly as the trainer encodes them; pass the trainer's
`--max_length`. All logic lives in `trl_mars.eval.evaluation`.
"""

from trl import TrlParser

from trl_mars.eval.evaluation import EvalRewardModelArguments, run_evaluation

if __name__ == "__main__":
    (args,) = TrlParser((EvalRewardModelArguments,)).parse_args_and_config()
    run_evaluation(args)
