"""Compare strategies x seeds x datasets under identical settings and budgets (resumable).

    python recipes/compare.py --config recipes/compare/grid_dev.yaml
    python recipes/compare.py --datasets ../shared/data/hh_rlhf_harmless_dev.jsonl --strategies none uniform mars \
        --seeds 1 2 3 --max_train_samples 64 --num_train_epochs 1 --max_length 128 --output_dir outputs/compare-tiny

Every MarsRewardConfig field (learning_rate, mars_tau, mars_budget_ratio, ...) is shared by all cells and settable
from the YAML or the CLI; named variants override fields per cell. Rerunning the same command reuses finished
cells. All logic lives in `trl_mars.cli.compare`.
"""

import logging

from trl import ModelConfig, TrlParser

from trl_mars import MarsRewardConfig
from trl_mars.cli.arguments import configure_logging
from trl_mars.cli.compare import COMPARE_DEFAULTS, CompareArguments, run_grid

if __name__ == "__main__":
    # trl-mars's INFO lines (round progress, the local engine's progress off a terminal), as recipes/mars_rm.py
    configure_logging(logging.WARNING, trl_mars_level=logging.INFO)
    parser = TrlParser((CompareArguments, MarsRewardConfig, ModelConfig))
    parser.set_defaults_with_config(**COMPARE_DEFAULTS)
    compare_args, training_args, model_args = parser.parse_args_and_config()
    run_grid(compare_args, training_args, model_args)
