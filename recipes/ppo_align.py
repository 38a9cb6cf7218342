"""Align a policy with a MARS reward model: PPO-style RL with LoRA (TRL's RLOO or GRPO; PPO on TRL <= 1.12).

The paper's settings are the defaults (LoRA r 16 / alpha 32 on attention and MLP projections, clip 0.2, KL 0.02,
prompts 512 tokens, responses 192 tokens). A YAML config and CLI flags override them, the TRL way:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/ppo_align.py \
        --config recipes/tinyllama-1.1b-chat/rloo/config_pku_saferlhf.yaml \
        --reward_model_name_or_path outputs/mars-rm-deberta-pku

Offline on a CPU (the packaged SmolLM2-135M-Instruct policy, the embedded MARS reward model, prompts shipped in
trl_mars/resources): recipes/smollm2-135m-instruct/rloo/config_offline.yaml. `packaged:` ids work as the policy.
All logic lives in `trl_mars.align.alignment`.
"""

from trl_mars.align.alignment import main

if __name__ == "__main__":
    main()
