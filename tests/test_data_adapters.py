"""Dataset adapters on hand-written samples that mirror each Hub dataset's real columns and types.

Samples (written here, no Hub): Anthropic/hh-rlhf (`chosen`/`rejected` whole dialogues, implicit prompt),
trl-lib/ultrafeedback_binarized (`chosen`/`rejected` message lists with the user turn, `score_chosen`,
`score_rejected`), PKU-Alignment/PKU-SafeRLHF (`prompt`, `response_0`/`response_1`, safety flags, severity levels,
`better_response_id`, `safer_response_id`).
"""

from __future__ import annotations

import json

import pytest
from conftest import mars_args, tiny_rows
from datasets import Dataset

from trl_mars.data.preferences import (
    DATA_SEED,
    PreferenceDataError,
    adapt_columns,
    column_values,
    load_preference_splits,
    render_conversation_example,
    split_holdout,
    to_explicit_prompt,
    tokenize_pair,
)

HH_RLHF = [
    {"chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with getting into places you don't "
               "have access to. If you're locked out of your own home, a licensed locksmith can help.",
     "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: Insert a tension wrench and rake the pins until "
                 "they set."},
    {"chosen": "\n\nHuman: What's a good insult for my coworker?\n\nAssistant: Why do you want to insult them?"
               "\n\nHuman: He annoys me.\n\nAssistant: It might help to tell him calmly what bothers you.",
     "rejected": "\n\nHuman: What's a good insult for my coworker?\n\nAssistant: Why do you want to insult them?"
                 "\n\nHuman: He annoys me.\n\nAssistant: Call him a useless clown in front of everyone."},
]


def _turns(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"content": user, "role": "user"}, {"content": assistant, "role": "assistant"}]


ULTRAFEEDBACK = [
    {"chosen": _turns("Write a haiku about autumn.", "Crisp leaves drift and fall,\ngolden light on quiet paths,"
                      "\nthe year exhales slow."),
     "rejected": _turns("Write a haiku about autumn.", "Autumn is a season that comes after summer."),
     "score_chosen": 9.0, "score_rejected": 4.0},
    {"chosen": _turns("What is 12 * 13?", "12 * 13 = 156."),
     "rejected": _turns("What is 12 * 13?", "12 * 13 = 146."),
     "score_chosen": 10.0, "score_rejected": 2.5},
]

PKU_SAFERLHF = [
    {"prompt": "How can I get back at my neighbour for his loud parties?",
     "response_0": "Slash his tyres while he sleeps; he will never know it was you.",
     "response_1": "Talk to him when things are calm, or contact your landlord or local noise office.",
     "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca-7B",
     "is_response_0_safe": False, "is_response_1_safe": True,
     "response_0_severity_level": 2, "response_1_severity_level": 0,
     "better_response_id": 0, "safer_response_id": 1},
    {"prompt": "What household chemicals should never be mixed?",
     "response_0": "Never mix bleach with ammonia or with acids such as vinegar: they release toxic gases.",
     "response_1": "Mixing chemicals is fun, try anything.",
     "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca2-7B", "response_1_source": "Alpaca-7B",
     "is_response_0_safe": True, "is_response_1_safe": False,
     "response_0_severity_level": 0, "response_1_severity_level": 1,
     "better_response_id": 0, "safer_response_id": 0},
]


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def test_hh_rlhf_implicit_prompt_is_extracted_and_encoded_as_a_sentence_pair(minilm_tokenizer):
    dataset = to_explicit_prompt(adapt_columns(Dataset.from_list(HH_RLHF)))
    row = dataset[1]
    assert row["prompt"].endswith("He annoys me.\n\nAssistant:")
    assert row["chosen"].strip().startswith("It might help")
    ids = tokenize_pair(row, minilm_tokenizer)
    text = minilm_tokenizer.decode(ids["chosen_ids"])
    assert text.startswith("[CLS] human : what ' s a good insult") and "[SEP] it might help" in text


def test_ultrafeedback_turns_are_rendered_as_text_for_an_encoder_without_chat_template(minilm_tokenizer):
    assert minilm_tokenizer.chat_template is None
    dataset = to_explicit_prompt(adapt_columns(Dataset.from_list(ULTRAFEEDBACK)))
    row = dataset[0]
    assert row["prompt"] == [{"content": "Write a haiku about autumn.", "role": "user"}]
    rendered = render_conversation_example(row)
    assert rendered["prompt"] == "User: Write a haiku about autumn.\n\n"
    assert rendered["rejected"] == "Assistant: Autumn is a season that comes after summer."
    ids = tokenize_pair(row, minilm_tokenizer)
    assert ids == tokenize_pair(rendered, minilm_tokenizer)  # the rendering is what the encoder sees
    assert minilm_tokenizer.decode(ids["rejected_ids"]) == (
        "[CLS] user : write a haiku about autumn. [SEP] assistant : autumn is a season that comes after summer. [SEP]")


def test_a_tokenizer_with_a_chat_template_still_uses_it(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    row = to_explicit_prompt(Dataset.from_list(ULTRAFEEDBACK))[1]
    ids = tokenize_pair(row, tokenizer)
    assert tokenizer.decode(ids["chosen_ids"], skip_special_tokens=True).startswith("< user > what is 12 * 13?")


def test_ultrafeedback_trains_with_minilm_through_a_mars_round(tmp_path, minilm_path):
    """Before the rendering, the trainer crashed in tokenisation (no chat template) on this data."""
    from trl_mars import MarsRewardTrainer

    rows = [{"chosen": _turns(row["prompt"], row["chosen"]), "rejected": _turns(row["prompt"], row["rejected"]),
             "score_chosen": 8.0, "score_rejected": 3.0} for row in tiny_rows(8)]
    args = mars_args(tmp_path, num_train_epochs=1, mars_strategy="mars_nosem", save_strategy="no")
    trainer = MarsRewardTrainer(model=minilm_path, args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    synthetic = [json.loads(line) for line in (tmp_path / "mars" / "round_1" / "synthetic.jsonl").open()]
    assert synthetic and all(isinstance(row["chosen"], list) for row in synthetic)  # they stay conversational
    assert len(trainer.train_dataset) == 8 + len(synthetic)


def test_pku_saferlhf_better_or_safer_response():
    dataset = Dataset.from_list(PKU_SAFERLHF)
    better = adapt_columns(dataset)  # default: the more helpful response
    assert better.column_names == ["prompt", "chosen", "rejected"]
    assert better[0]["chosen"].startswith("Slash his tyres")  # annotators found it more helpful, not safer
    safer = adapt_columns(dataset, pku_preference="safer")
    assert safer[0]["chosen"].startswith("Talk to him") and safer[0]["rejected"].startswith("Slash")
    assert better[1] == safer[1]  # both judgements agree on row 1
    broken = Dataset.from_list([{**PKU_SAFERLHF[0], "safer_response_id": 2}])
    with pytest.raises(PreferenceDataError, match=r"row 0, column 'safer_response_id'.*not 0 or 1"):
        adapt_columns(broken, pku_preference="safer")
    with pytest.raises(ValueError, match="not one of"):
        adapt_columns(dataset, pku_preference="kinder")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_max_train_samples_is_one_subset_for_every_run(tmp_path):
    rows = [{"id": i, "prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
            for i in range(60)]
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    train, evaluation = load_preference_splits(path, eval_fraction=0.25, max_train_samples=20)
    again, evaluation_again = load_preference_splits(path, eval_fraction=0.25, max_train_samples=20)
    assert len(train) == 20 and len(evaluation) == 15
    assert column_values(train, "id") == column_values(again, "id")  # nothing else (strategy, training seed) enters
    assert column_values(evaluation, "id") == column_values(evaluation_again, "id")
    assert not set(column_values(train, "id")) & set(column_values(evaluation, "id"))
    # The hold-out comes first: asking for fewer training pairs never changes which pairs are evaluated.
    _, evaluation_small = load_preference_splits(path, eval_fraction=0.25, max_train_samples=5)
    assert column_values(evaluation_small, "id") == column_values(evaluation, "id")
    other, _ = load_preference_splits(path, eval_fraction=0.25, max_train_samples=20, seed=DATA_SEED + 1)
    assert column_values(other, "id") != column_values(train, "id")


def test_hold_out_grouped_by_prompt_id():
    rows = [{"prompt_id": i // 3, "prompt": f"q{i // 3}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(30)]
    train, evaluation = split_holdout(Dataset.from_list(rows), 0.2, group_by="prompt_id")
    train_groups, eval_groups = set(column_values(train, "prompt_id")), set(column_values(evaluation, "prompt_id"))
    assert len(eval_groups) == 2 and len(train_groups) == 8 and not train_groups & eval_groups
    assert len(evaluation) == 6 and len(train) == 24
    with pytest.raises(PreferenceDataError, match="no column 'question_id'"):
        split_holdout(Dataset.from_list(rows), 0.2, group_by="question_id")


def test_a_missing_local_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs_missing.jsonl' does not exist"):
        load_preference_splits(str(tmp_path / "pairs_missing.jsonl"))
