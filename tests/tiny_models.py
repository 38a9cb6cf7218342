"""Tiny, randomly initialised generative models and a word-level tokenizer with a chat template, built offline.

Used by the alignment and win-rate tests: small enough to generate and train on 2 CPU cores in seconds.
"""

from __future__ import annotations

from pathlib import Path

from conftest import TOPICS, tiny_rows

CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def _corpus() -> list[str]:
    words = " ".join(TOPICS) + " user assistant system : . , ? ! ' a an the is to and of you me it"
    texts = [words]
    for row in tiny_rows(len(TOPICS)):
        texts.extend([row["prompt"], row["chosen"], row["rejected"]])
    return texts


def build_tokenizer(chat_template: bool = True):
    """A WordLevel fast tokenizer over the test vocabulary (~150 tokens), with <pad>, <s>, </s>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.train_from_iterator(_corpus(), trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=2048)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_llama(directory: str | Path, *, num_labels: int | None = None, seed: int = 0) -> str:
    """Saves a 2-layer random Llama (causal LM, or a sequence classifier with `num_labels`) and its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    if num_labels is None:
        model = LlamaForCausalLM(config)
    else:
        config.num_labels = num_labels
        model = LlamaForSequenceClassification(config)
    directory = str(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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
