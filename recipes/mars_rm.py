"""Train a reward model with MARS.

With no arguments this runs the embedded offline default (all-MiniLM-L6-v2, the small preference set that ships
with trl_mars, the lexical paraphraser) on all the machine's cores:

    accelerate launch --quiet --config_file accelerate_configs/cpu.yaml recipes/mars_rm.py

A real run takes a YAML config and CLI overrides, the TRL way:

    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/mars_rm.py \
        --config recipes/deberta-v3-base/mars/config_hh_rlhf.yaml --mars_tau 0.5

`--help` lists the MARS options first. Bad configuration, data or model names end with one message (exit 2).
"""

from trl import ModelConfig

from trl_mars import MarsRewardConfig
from trl_mars.cli.arguments import MarsParser, exit_on_setup_error
from trl_mars.cli.recipe import (
    EMBEDDED_DEFAULTS,
    MarsScriptArguments,
    build_trainer,
    train_and_save,
)

if __name__ == "__main__":
    parser = MarsParser((MarsScriptArguments, MarsRewardConfig, ModelConfig), recipe_defaults=EMBEDDED_DEFAULTS)
    with exit_on_setup_error():
        script_args, training_args, model_args = parser.parse_args_and_config()
        trainer = build_trainer(script_args, training_args, model_args)
    train_and_save(trainer, training_args)
