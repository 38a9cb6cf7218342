"""Test assets built offline: a tiny random Llama (trl_mars.align.tiny_policy) over the test vocabulary, and MiniLM
reward models with a fresh scalar head, saved full or as a LoRA adapter, as MarsRewardTrainer saves them."""

from __future__ import annotations

from pathlib import Path

from conftest import TOPICS, tiny_rows

from trl_mars.align.tiny_policy import build_word_tokenizer, save_random_llama


def test_texts() -> list[str]:
    texts = [" ".join(TOPICS) + " user assistant system : . , ? ! ' a the is to and of you me it"]
    for row in tiny_rows(len(TOPICS)):
        texts.extend([row["prompt"], row["chosen"], row["rejected"]])
    return texts


test_texts.__test__ = False  # not a test, despite the name


def build_tokenizer():
    return build_word_tokenizer(test_texts())


def save_tiny_llama(directory: str | Path, *, num_labels: int | None = None, seed: int = 0) -> str:
    return save_random_llama(directory, test_texts(), shape="tiny", num_labels=num_labels, seed=seed)


def save_minilm_reward_model(directory: str | Path, minilm_path: str, *, lora: bool = False, seed: int = 0) -> str:
    """The packaged MiniLM with a fresh scalar head (as MarsRewardTrainer starts from), saved full or as LoRA."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1)
    with torch.no_grad():  # a head that is not near zero, so scores differ visibly between inputs
        model.classifier.weight.normal_(0, 0.5)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                 target_modules=["query", "value"]))
        with torch.no_grad():  # make the adapter matter: B starts at zero
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.2)
    directory = str(directory)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(directory)
    return directory
