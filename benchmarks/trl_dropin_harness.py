"""Runs TRL's own reward-trainer tests against `MarsRewardTrainer`, offline, in a scratch folder.

This script holds no TRL code. It reads TRL's test file and `tests/data/template.jinja` out of a local git clone of
huggingface/trl at a given commit, rewrites only the `from trl import RewardConfig, RewardTrainer` line, and builds
offline stand-ins for the Hub assets the file names:

- models: tiny random models saved to folders named like the Hub ids (`trl-internal-testing/tiny-Qwen2ForCausalLM-2.5`,
  ...), relative to the folder pytest runs in, so `from_pretrained("trl-internal-testing/...")` loads the local folder.
  Their tokenizer is the byte-level BPE tokenizer of the packaged SmolLM2-135M-Instruct (same `<|im_start|>` /
  `<|im_end|>` tokens as Qwen) with the Qwen2.5 chat template that ships with TRL (`trl/chat_templates`);
  `tiny-RemoteForCausalLM` is a Qwen2 subclass registered through `auto_map` (custom code); `Qwen/Qwen3-4B` is a
  tokenizer-only folder with TRL's Qwen3 template.
- datasets: `trl-internal-testing/zen` (the four preference configs, 17 train / 2 test rows built from `import this`)
  and `trl-internal-testing/toolcall` (`preference`: assistant tool-call turns without content, a JSON `tools` column),
  as local folders whose README declares the configs, so `load_dataset(name, config)` reads them.
- on a CPU-only machine the conftest lets `RewardConfig`'s default `bf16=True` through (bf16 autocast on the CPU),
  which `TrainingArguments` would otherwise refuse without `use_cpu=True`.
- `lazy_shared_datadir` (a pytest-datadir fixture) points at a copy of TRL's `tests/data/template.jinja`, and a
  small `testing_utils.py` provides the two helpers the file imports (`TrlTestCase`, `require_peft`).

Usage (three runs; MODE is plain, none or default):

    python benchmarks/trl_dropin_harness.py --trl-repo /path/to/trl/.git --commit f2cd57710 --out /tmp/trl_dropin
    cd /tmp/trl_dropin/assets && python -m pytest -q -p no:cacheprovider /tmp/trl_dropin/MODE/tests/test_reward_trainer.py

`plain` keeps `trl.RewardTrainer`; `none` uses `MarsRewardTrainer` with `RewardConfig` = `MarsRewardConfig` with
`mars_strategy="none"`; `default` uses `MarsRewardTrainer` / `MarsRewardConfig` with their defaults. The tests that
pass no `args` get the default `MarsRewardConfig` in both MARS modes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

IMPORT_LINE = "from trl import RewardConfig, RewardTrainer\n"
IMPORTS = {
    "plain": IMPORT_LINE,
    "none": ("import functools\n"
             "from trl_mars import MarsRewardConfig, MarsRewardTrainer as RewardTrainer\n"
             "RewardConfig = functools.partial(MarsRewardConfig, mars_strategy='none')\n"),
    "default": "from trl_mars import MarsRewardConfig as RewardConfig, MarsRewardTrainer as RewardTrainer\n",
}

CONFTEST = '''
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `RewardConfig` defaults to bf16=True, which `TrainingArguments` refuses on a machine without a bf16 GPU unless
# `use_cpu` is set. This CPU-only stand-in lets the default through, so bf16 autocast runs on the CPU as it would on a
# bf16 GPU; the test file itself is unchanged.
import transformers.training_args

transformers.training_args.is_torch_bf16_gpu_available = lambda: True


@pytest.fixture
def lazy_shared_datadir():
    return Path(__file__).parent / "data"
'''

# Stand-in for TRL's tests/testing_utils.py (the commit's version imports helpers newer than the installed TRL): the
# two names the reward-trainer tests use.
TESTING_UTILS = '''
import pytest
from transformers.utils import is_peft_available

require_peft = pytest.mark.skipif(not is_peft_available(), reason="test requires peft")


class TrlTestCase:
    @pytest.fixture(autouse=True)
    def set_tmp_dir(self, tmp_path):
        self.tmp_dir = str(tmp_path)
'''

REMOTE_CODE = '''
from transformers import AutoModel, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2Model


class RemoteConfig(Qwen2Config):
    model_type = "remote"


class RemoteModel(Qwen2Model):
    config_class = RemoteConfig


AutoModel.register(RemoteConfig, RemoteModel, exist_ok=True)  # the classification head builds its base with AutoModel


class RemoteForCausalLM(Qwen2ForCausalLM):
    config_class = RemoteConfig


class RemoteForSequenceClassification(Qwen2ForSequenceClassification):
    config_class = RemoteConfig
'''

def zen_lines() -> list[str]:
    """The 19 aphorisms of `import this` (Python's standard library)."""
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return [line for line in codecs.decode(this.s, "rot13").splitlines()[2:] if line.strip()]


def zen_rows():
    """(prompt, chosen, rejected) triples: the true line of the Zen against a scrambled one."""
    rows, zen = [], zen_lines()
    for i, line in enumerate(zen):
        words = line.split()
        cut = max(1, len(words) // 2)
        prompt, chosen = " ".join(words[:cut]), " " + " ".join(words[cut:])
        other = zen[(i + 7) % len(zen)].split()
        rejected = " " + " ".join(other[len(other) // 2:])
        rows.append((prompt, chosen, rejected))
    return rows


def build_datasets(root: Path) -> None:
    from datasets import Dataset

    rows = zen_rows()
    splits = {"train": rows[:17], "test": rows[17:]}
    configs = {
        "standard_preference": lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r},
        "standard_implicit_prompt_preference": lambda p, c, r: {"chosen": p + c, "rejected": p + r},
        "conversational_preference": lambda p, c, r: {
            "prompt": [{"role": "user", "content": f"Complete: {p}"}],
            "chosen": [{"role": "assistant", "content": c.strip()}],
            "rejected": [{"role": "assistant", "content": r.strip()}]},
        "conversational_implicit_prompt_preference": lambda p, c, r: {
            "chosen": [{"role": "user", "content": f"Complete: {p}"}, {"role": "assistant", "content": c.strip()}],
            "rejected": [{"role": "user", "content": f"Complete: {p}"}, {"role": "assistant", "content": r.strip()}]},
    }
    zen = root / "trl-internal-testing" / "zen"
    _write_configs(zen, {name: {split: Dataset.from_list([make(*row) for row in split_rows])
                                for split, split_rows in splits.items()} for name, make in configs.items()})

    tools = json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    cities = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Perth", "Dakar"]
    toolcall = []
    for i, city in enumerate(cities):
        call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
        toolcall.append({
            "prompt": [{"role": "user", "content": f"What is the weather in {city}?", "tool_calls": None},
                       {"role": "assistant", "content": None, "tool_calls": [call]},
                       {"role": "tool", "content": f"{10 + i} degrees, sunny", "tool_calls": None}],
            "chosen": [{"role": "assistant", "content": f"It is {10 + i} degrees and sunny in {city}.",
                        "tool_calls": None}],
            "rejected": [{"role": "assistant", "content": "I cannot tell.", "tool_calls": None}],
            "tools": tools,
        })
    _write_configs(root / "trl-internal-testing" / "toolcall",
                   {"preference": {"train": Dataset.from_list(toolcall[:6]), "test": Dataset.from_list(toolcall[6:])}})


def _write_configs(folder: Path, configs: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    yaml = ["---", "configs:"]
    for name, splits in configs.items():
        yaml += [f"- config_name: {name}", "  data_files:"]
        for split, dataset in splits.items():
            dataset.to_parquet(str(folder / name / f"{split}.parquet"))
            yaml += [f"  - split: {split}", f"    path: {name}/{split}.parquet"]
    (folder / "README.md").write_text("\n".join(yaml + ["---", "Offline stand-in."]) + "\n")


def build_models(root: Path) -> None:
    import torch
    import trl
    from transformers import (
        AutoTokenizer,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2ForSequenceClassification,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    from trl_mars.augment.model_source import resolve_packaged_model

    templates = Path(trl.__file__).parent / "chat_templates"
    smol = resolve_packaged_model("packaged:SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(smol)
    tokenizer.chat_template = (templates / "qwen2_5.jinja").read_text()
    small = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                 eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    base = root / "trl-internal-testing"
    specs = {
        "tiny-Qwen2ForCausalLM-2.5": (Qwen2ForCausalLM, Qwen2Config(**small)),
        "tiny-Qwen2ForSequenceClassification-2.5": (Qwen2ForSequenceClassification,
                                                    Qwen2Config(**small, num_labels=1)),
        "tiny-Qwen3MoeForCausalLM": (Qwen3MoeForCausalLM, Qwen3MoeConfig(**small, head_dim=4, num_experts=4,
                                                                          num_experts_per_tok=2,
                                                                          moe_intermediate_size=16)),
        "tiny-LlamaForCausalLM-3.2": (LlamaForCausalLM, LlamaConfig(**small)),
        "tiny-GPTNeoXForCausalLM": (GPTNeoXForCausalLM, GPTNeoXConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)),
    }
    for name, (cls, config) in specs.items():
        torch.manual_seed(0)
        cls(config).save_pretrained(base / name)
        tokenizer.save_pretrained(base / name)
    neox = AutoTokenizer.from_pretrained(smol)  # no chat template: the tests set one from a path or a model
    neox.chat_template = None
    neox.save_pretrained(base / "tiny-GPTNeoXForCausalLM")
    (base / "tiny-GPTNeoXForCausalLM" / "chat_template.jinja").unlink(missing_ok=True)

    remote = base / "tiny-RemoteForCausalLM"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**small)).save_pretrained(remote)
    tokenizer.save_pretrained(remote)
    (remote / "configuration_remote.py").write_text(REMOTE_CODE)
    (remote / "modeling_remote.py").write_text(REMOTE_CODE)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="remote", architectures=["RemoteForCausalLM"], auto_map={
        "AutoConfig": "configuration_remote.RemoteConfig",
        "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM",
        "AutoModelForSequenceClassification": "modeling_remote.RemoteForSequenceClassification"})
    (remote / "config.json").write_text(json.dumps(config, indent=2))

    qwen3 = AutoTokenizer.from_pretrained(smol)
    qwen3.chat_template = (templates / "qwen3.jinja").read_text()
    qwen3.save_pretrained(root / "Qwen" / "Qwen3-4B")


def write_tests(trl_repo: str, commit: str, out: Path) -> None:
    def show(path):
        return subprocess.run(["git", "--git-dir", trl_repo, "show", f"{commit}:{path}"], check=True,
                              capture_output=True, text=True).stdout

    source = show("tests/test_reward_trainer.py")
    assert source.count(IMPORT_LINE) == 1, "the import line to rewrite was not found"
    for mode, imports in IMPORTS.items():
        tests = out / mode / "tests"
        (tests / "data").mkdir(parents=True, exist_ok=True)
        (tests / "__init__.py").write_text("")
        (tests / "conftest.py").write_text(CONFTEST)
        (tests / "testing_utils.py").write_text(TESTING_UTILS)
        (tests / "data" / "template.jinja").write_text(show("tests/data/template.jinja"))
        (tests / "test_reward_trainer.py").write_text(source.replace(IMPORT_LINE, imports))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-repo", required=True, help="git directory of a huggingface/trl clone")
    parser.add_argument("--commit", default="f2cd57710")
    parser.add_argument("--out", default="/tmp/trl_dropin")
    args = parser.parse_args()
    out = Path(args.out)
    write_tests(args.trl_repo, args.commit, out)
    build_models(out / "assets")
    build_datasets(out / "assets")
    print(f"built {out}; run: cd {out / 'assets'} && python -m pytest -q -p no:cacheprovider "
          f"{out}/MODE/tests/test_reward_trainer.py  (MODE: {', '.join(IMPORTS)})")


if __name__ == "__main__":
    main()
