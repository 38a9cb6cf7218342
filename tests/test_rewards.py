"""MarsRewardFunction scores exactly what the reward model scores when called directly on the same pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import save_minilm_reward_model, save_tiny_llama
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trl_mars.align.rewards import MarsRewardFunction

PROMPTS = ["Can you give me one useful tip about tea?", "How do I keep bread fresh?"]
COMPLETIONS = ["Sure. Start small and write down what works for you.", "I don't know, look it up yourself."]


@pytest.fixture(scope="module")
def minilm_rm(tmp_path_factory, minilm_path):
    return save_minilm_reward_model(tmp_path_factory.mktemp("rm_full"), minilm_path)


def direct_score(model, input_ids: list[int]) -> float:
    with torch.no_grad():
        return model(input_ids=torch.tensor([input_ids])).logits[0, 0].item()


def test_encoder_scores_match_direct_calls(minilm_rm):
    reward = MarsRewardFunction(minilm_rm, device="cpu", batch_size=3)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_rm, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_rm)
    prompts = PROMPTS * 2
    completions = COMPLETIONS + COMPLETIONS[::-1]
    expected = [direct_score(model, tokenizer(p, c)["input_ids"]) for p, c in zip(prompts, completions)]
    got = reward(prompts=prompts, completions=completions, trainer_state=None)  # extra kwargs as TRL passes them
    assert reward.max_length == 512
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(set(np.round(got, 4))) == 4  # distinct inputs, distinct scores: the comparison is not vacuous


def test_conversational_pair_is_scored_in_the_training_format_by_an_encoder(minilm_rm):
    """BERT has no chat template: training renders the turns as "Role: content" text (TRL's scoring fails here), the
    completion keeping its "Assistant:" role, and the reward function encodes exactly that."""
    reward = MarsRewardFunction(minilm_rm, device="cpu")
    model = AutoModelForSequenceClassification.from_pretrained(minilm_rm, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_rm)
    prompt = [{"role": "user", "content": "Tell me about chess."},
              {"role": "assistant", "content": "It is a board game."},
              {"role": "user", "content": "How do I get better at it?"}]
    completion = [{"role": "assistant", "content": "Play a little every day and review your games."}]
    text_prompt = "User: Tell me about chess.\n\nAssistant: It is a board game.\n\nUser: How do I get better at it?\n\n"
    text_completion = "Assistant: Play a little every day and review your games."
    ids = tokenizer(text_prompt, text_completion)["input_ids"]
    assert reward.encode(prompt, completion) == ids
    assert tokenizer.decode(ids) == ("[CLS] user : tell me about chess. assistant : it is a board game. user : how do "
                                     "i get better at it? [SEP] assistant : play a little every day and review your "
                                     "games. [SEP]")
    assert reward(prompts=[prompt], completions=[completion]) == pytest.approx([direct_score(model, ids)], abs=1e-5)


def test_text_input_format_flattens_a_chat_to_the_standard_pair(minilm_rm):
    """For a reward model trained on plain-text pairs (the embedded data) scored on a chat policy's prompts."""
    reward = MarsRewardFunction(minilm_rm, device="cpu", input_format="text")
    tokenizer = AutoTokenizer.from_pretrained(minilm_rm)
    prompt = [{"role": "user", "content": PROMPTS[1]}]
    completion = [{"role": "assistant", "content": COMPLETIONS[0]}]
    assert reward.encode(prompt, completion) == tokenizer(PROMPTS[1], COMPLETIONS[0])["input_ids"]
    assert reward.encode(PROMPTS[1], COMPLETIONS[0]) == tokenizer(PROMPTS[1], COMPLETIONS[0])["input_ids"]
    turns = prompt + [{"role": "assistant", "content": "Keep it in a box."}, {"role": "user", "content": "And?"}]
    assert reward.encode(turns, completion) == tokenizer(
        f"User: {PROMPTS[1]}\n\nAssistant: Keep it in a box.\n\nUser: And?\n\n", COMPLETIONS[0])["input_ids"]
    with pytest.raises(ValueError, match="input_format"):
        MarsRewardFunction(reward.model, reward.tokenizer, input_format="chat")


def test_long_input_keeps_cls_and_the_end(minilm_rm):
    """Over 512 tokens: [CLS] + the last 511 tokens (start of the prompt dropped), as MarsRewardTrainer truncates."""
    reward = MarsRewardFunction(minilm_rm, device="cpu")
    model = AutoModelForSequenceClassification.from_pretrained(minilm_rm, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_rm)
    prompt = " ".join(f"word{i}" for i in range(900))
    completion = "Here is the short answer at the very end."
    full = tokenizer(prompt, completion)["input_ids"]
    assert len(full) > 512
    kept = [tokenizer.cls_token_id] + full[-511:]
    expected = direct_score(model, kept)
    got = reward(prompts=[prompt, PROMPTS[0]], completions=[completion, COMPLETIONS[0]])
    assert got[0] == pytest.approx(expected, abs=1e-5)
    assert reward.encode(prompt, completion)[-1] == tokenizer.sep_token_id


def test_lora_reward_model_matches_its_unmerged_adapter(tmp_path, minilm_path):
    from peft import PeftModel

    folder = save_minilm_reward_model(tmp_path / "rm_lora", minilm_path, lora=True)
    reward = MarsRewardFunction(folder, device="cpu")
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1)
    adapted = PeftModel.from_pretrained(base, folder).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [tokenizer(p, c)["input_ids"] for p, c in zip(PROMPTS, COMPLETIONS)]
    got = reward(prompts=PROMPTS, completions=COMPLETIONS)
    np.testing.assert_allclose(got, [direct_score(adapted, i) for i in ids], atol=1e-4)
    # the saved adapter (and its trained head) is really applied
    assert not np.allclose(got, [direct_score(plain, i) for i in ids], atol=1e-3)


def test_decoder_reward_model_uses_chat_template_and_eos(tmp_path):
    folder = save_tiny_llama(tmp_path / "llama_rm", num_labels=1)
    reward = MarsRewardFunction(folder, device="cpu", max_length=20)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = [{"role": "user", "content": "Can you give me one useful tip about tea?"}]
    completion = [{"role": "assistant", "content": "Sure. Start small and write down what works for you."}]
    ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    assert len(ids) > 20 and ids[0] == tokenizer.bos_token_id
    text_ids = tokenizer(PROMPTS[0] + COMPLETIONS[0] + tokenizer.eos_token)["input_ids"]
    assert len(text_ids) > 20 and text_ids[-1] == tokenizer.eos_token_id and text_ids[0] != tokenizer.bos_token_id
    # a leading BOS is kept, then the end (the start of the prompt goes); EOS appended to text as TRL does
    expected = [direct_score(model, [ids[0]] + list(ids[-19:])), direct_score(model, text_ids[-20:])]
    got = reward(prompts=[prompt, PROMPTS[0]], completions=[completion, COMPLETIONS[0]])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_normalisation_and_bad_input(minilm_rm):
    reward = MarsRewardFunction(minilm_rm, device="cpu")
    prompts, completions = PROMPTS * 2, COMPLETIONS + COMPLETIONS[::-1]
    raw = reward.raw_scores(prompts, completions)
    reward.calibrate(prompts, completions)
    normalised = np.array(reward(prompts=prompts, completions=completions))
    np.testing.assert_allclose(normalised, (raw - raw.mean()) / raw.std(), atol=1e-6)
    assert abs(normalised.mean()) < 1e-6 and normalised.std() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        reward(prompts=PROMPTS, completions=COMPLETIONS[:1])
    with pytest.raises(ValueError, match="tokenizer"):
        MarsRewardFunction(reward.model)


def _as_conversation(row: dict) -> dict:
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


@pytest.mark.parametrize("data_format", ["standard", "conversational"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_reward_function_encodes_exactly_the_training_token_ids(tmp_path, minilm_rm, kind, data_format):
    """The ids MarsRewardTrainer trains on (originals via `_prepare_dataset`, synthetic pairs via `tokenize_pairs`,
    both truncated to max_length) are the ids MarsRewardFunction scores for the same (prompt, response)."""
    from conftest import mars_args, tiny_rows
    from datasets import Dataset

    from trl_mars import MarsRewardTrainer

    folder = minilm_rm if kind == "encoder" else save_tiny_llama(tmp_path / "llama_rm", num_labels=1)
    rows = tiny_rows(4)
    # one long prompt, so keep-the-end truncation is compared too
    rows[0] = {**rows[0], "prompt": " ".join(["Tell me about tea and bread and rain."] * 12) + " " + rows[0]["prompt"]}
    if data_format == "conversational":
        rows = [_as_conversation(row) for row in rows]
    max_length = 48
    trainer = MarsRewardTrainer(folder, args=mars_args(tmp_path / "train", mars_strategy="none",
                                                       max_length=max_length),
                                train_dataset=Dataset.from_list(rows))
    reward = MarsRewardFunction(trainer.model, trainer.processing_class, max_length=max_length, device="cpu")
    trained = {side: list(map(list, trainer.train_dataset[f"{side}_ids"])) for side in ("chosen", "rejected")}
    assert len(trained["chosen"][0]) == max_length  # the long row really was truncated
    synthetic = trainer._mars_tokenize_rows([{**row, "source_index": i} for i, row in enumerate(rows)])
    for side in ("chosen", "rejected"):
        got = [reward.encode(row["prompt"], row[side]) for row in rows]
        assert got == trained[side]
        assert got == list(map(list, synthetic[f"{side}_ids"]))
    if data_format == "conversational" and kind == "encoder":
        tokenizer = trainer.processing_class
        assert tokenizer.decode(trained["chosen"][1]).startswith("[CLS] user : can you give me one useful tip")
        assert "[SEP] assistant : sure." in tokenizer.decode(trained["chosen"][1])
