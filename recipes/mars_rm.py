"""Train a reward model with MARS.

With no arguments this runs the embedded offline default (all-MiniLM-L6-v2, the small preference set that ships
with trl_mars, the lexical paraphraser):

    accelerate launch recipes/mars_rm.py

A real run takes a YAML config and CLI overrides, the TRL way:

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/mars_rm.py \
        --config recipes/deberta-v3-base/mars/config_hh_rlhf.yaml --mars_tau 0.5
"""

from trl import ModelConfig, TrlParser

from trl_mars import MarsRewardConfig
from trl_mars.recipe import EMBEDDED_DEFAULTS, MarsScriptArguments, run

if __name__ == "__main__":
    parser = TrlParser((MarsScriptArguments, MarsRewardConfig, ModelConfig))
    parser.set_defaults_with_config(**EMBEDDED_DEFAULTS)
    script_args, training_args, model_args = parser.parse_args_and_config()
    run(script_args, training_args, model_args)
