"""LexicalParaphraser: distinct, deterministic, structure-preserving surface rewrites."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trl_mars.augment.base import Paraphraser
from trl_mars.augment.lexical import LexicalParaphraser, protected_spans

LONG = (
    "However, you can use a big hammer to help you quickly. It is also important to check the results. "
    "For example, we want to buy a lot of tools because they are useful."
)


def test_protocol_and_fingerprint():
    p = LexicalParaphraser(seed=3)
    assert isinstance(p, Paraphraser)
    assert p.name == "lexical"
    assert p.fingerprint() == {"backend": "lexical", "version": 2, "seed": 3, "fallback": True}
    assert LexicalParaphraser(seed=3, fallback=False).fingerprint()["fallback"] is False


def test_n_distinct_variants_none_equal_to_source():
    out = LexicalParaphraser().paraphrase([LONG], 6)
    assert len(out) == 1
    variants = out[0]
    assert len(variants) == 6
    assert len(set(variants)) == 6
    assert LONG not in variants


def test_deterministic_for_seed_text_n():
    texts = [LONG, "Do not worry, it is easy to use.", "I think the big problem is not the method."]
    a = LexicalParaphraser(seed=1).paraphrase(texts, 4)
    b = LexicalParaphraser(seed=1).paraphrase(texts, 4)
    assert a == b
    # Another seed picks other combinations for at least one of the texts with many edit sites.
    others = [LexicalParaphraser(seed=s).paraphrase([LONG], 4)[0] for s in range(2, 6)]
    assert any(o != a[0] for o in others)


def test_deterministic_across_processes_with_different_hash_seeds():
    # The generator is seeded with SHA-256, not hash(): two interpreters with different PYTHONHASHSEED agree.
    # lexical.py only needs the standard library, so it is loaded straight from its file (fast start-up).
    spec = importlib.util.find_spec("trl_mars.augment.lexical")
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('lexical_copy', {spec.origin!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)\n"
        f"print(json.dumps(mod.LexicalParaphraser(seed=7).paraphrase([{LONG!r}], 5)))\n"
    )
    outputs = []
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.append(json.loads(run.stdout))
    assert outputs[0] == outputs[1] == LexicalParaphraser(seed=7).paraphrase([LONG], 5)


def test_code_fences_and_inline_code_untouched():
    fence = "```python\n# use a big helper\nhelp(use=big)\n```"
    text = f"You can use a big helper.\n\n{fence}\n\nAlso, run `use big help` to help quickly."
    variants = LexicalParaphraser().paraphrase([text], 8)[0]
    assert variants
    for v in variants:
        assert fence in v
        assert "`use big help`" in v
    # The prose around the code did change.
    assert any("utilise" in v or "large" in v or "rapidly" in v for v in variants)


def test_urls_and_emails_protected():
    text = "Visit https://example.com/use/big-help for help, or email help@big.org to help quickly."
    for v in LexicalParaphraser().paraphrase([text], 5)[0]:
        assert "https://example.com/use/big-help" in v
        assert "help@big.org" in v
    spans = protected_spans(text)
    assert [text[s:e] for s, e in spans] == ["https://example.com/use/big-help", "help@big.org"]


def test_capitalisation_preserved_and_fewer_when_few_sites():
    # Three edit sites, one option each: Big -> Large, problems -> issues, HELP -> ASSIST.
    # Every non-empty subset is a variant: 2**3 - 1 = 7 < 10 requested.
    text = "Big problems. HELP ME."
    variants = LexicalParaphraser().paraphrase([text], 10)[0]
    assert sorted(variants) == sorted(
        [
            "Large problems. HELP ME.",
            "Big issues. HELP ME.",
            "Big problems. ASSIST ME.",
            "Large issues. HELP ME.",
            "Large problems. ASSIST ME.",
            "Big issues. ASSIST ME.",
            "Large issues. ASSIST ME.",
        ]
    )


def test_no_sites_gives_no_variants_and_one_site_gives_one():
    p = LexicalParaphraser(fallback=False)
    assert p.paraphrase(["Hi.", "", "12345"], 3) == [[], [], []]
    assert p.paraphrase(["I do not know."], 5) == [["I don't know."]]
    assert p.paraphrase([LONG], 0) == [[]]


def test_contractions_both_ways_with_guards():
    p = LexicalParaphraser(fallback=False)
    assert p.paraphrase(["Don't worry."], 3) == [["Do not worry."]]
    # "don't you" must not become "do not you"; "what it is." has no following word, so it is not contracted.
    assert p.paraphrase(["Don't you know what it is?"], 3) == [[]]
    # "it's been" expands to "it has been"; the typographic apostrophe is kept.
    assert p.paraphrase(["Well, it’s been fun."], 3) == [["Well, it has been fun."]]
    assert p.paraphrase(["It is raining."], 3) == [["It's raining."]]


def test_discourse_markers_at_sentence_starts_only():
    p = LexicalParaphraser(fallback=False)
    assert sorted(p.paraphrase(["Finally, we rest."], 5)[0]) == ["Lastly, we rest."]
    # Not at a sentence start: "however" mid-sentence is not a marker site.
    assert p.paraphrase(["We rest, however tired."], 5) == [[]]
    out = p.paraphrase(["Sure! Here we go."], 5)[0]
    assert out == ["Certainly! Here we go."]


def test_article_follows_the_replacement():
    p = LexicalParaphraser(fallback=False)
    # "an easy" -> "a simple" / "a straightforward"; "a huge" <- "an enormous".
    assert sorted(p.paraphrase(["An easy task."], 5)[0]) == ["A simple task.", "A straightforward task."]
    assert sorted(p.paraphrase(["an enormous task"], 5)[0]) == ["a huge task", "a massive task"]


def test_context_guards_for_verbs_and_idioms():
    p = LexicalParaphraser(fallback=False)
    # "use" after a determiner is a noun; "used to" is an idiom; "as soon as" stays.
    assert p.paraphrase(["The use of force."], 5) == [[]]
    assert p.paraphrase(["I used to swim."], 5) == [[]]
    assert p.paraphrase(["Call as soon as you can."], 5) == [[]]
    assert "We utilise it." in p.paraphrase(["We use it."], 5)[0]
    # Some verbs are rewritten only before an object: "help you" -> "assist you", but not "helps inspire";
    # "needs" as a noun ("specific needs") and "purchase" as a noun stay.
    assert p.paraphrase(["It helps inspire."], 5) == [[]]
    assert p.paraphrase(["We help you."], 5) == [["We assist you."]]
    assert p.paraphrase(["Your specific needs."], 5) == [["Your particular needs."]]
    assert p.paraphrase(["Your next purchase."], 5) == [[]]


def test_newlines_lists_numbers_and_whitespace_preserved():
    text = "Steps:\n\n1. Use 3 big bowls.\n2. Mix 2.5 cups quickly.\n   - Also, help the kids.\n\tDone in 10 minutes."
    variants = LexicalParaphraser().paraphrase([text], 6)[0]
    assert len(variants) == 6
    for v in variants:
        assert v.count("\n") == text.count("\n")
        assert re.findall(r"\d+(?:\.\d+)?", v) == ["1", "3", "2", "2.5", "10"]
        for line_v, line_t in zip(v.split("\n"), text.split("\n")):
            # Indentation and list markers are kept exactly, and so is trailing punctuation.
            lead = r"[ \t]*(?:\d+\.|-)?[ \t]*"
            assert re.match(lead, line_v).group(0) == re.match(lead, line_t).group(0)
            assert line_v[-1:] == line_t[-1:]


def test_throughput_is_sane():
    p = LexicalParaphraser()
    texts = [f"Item {i}: it is important to use a big bowl and help quickly, but do not rush." for i in range(2000)]
    start = time.perf_counter()
    out = p.paraphrase(texts, 5)
    elapsed = time.perf_counter() - start
    assert all(len(v) == 5 for v in out)
    assert elapsed < 30, f"{len(texts)} short texts took {elapsed:.1f}s"


@pytest.mark.parametrize("n", [1, 3, 10])
def test_every_variant_is_distinct_for_various_n(n):
    p = LexicalParaphraser(seed=11)
    for text in [LONG, "Maybe we should start now.", "It is not a big deal."]:
        variants = p.variants(text, n)
        assert len(variants) <= n
        assert len(set(variants)) == len(variants)
        assert text not in variants


def test_package_file_needs_only_the_standard_library():
    source = Path(importlib.util.find_spec("trl_mars.augment.lexical").origin).read_text()
    imports = set(re.findall(r"^(?:from|import) ([\w.]+)", source, flags=re.MULTILINE))
    assert imports <= {"__future__", "bisect", "hashlib", "itertools", "math", "random", "re", "collections.abc",
                       "dataclasses", "importlib.resources", "typing"}


# ----- fallback operations: every text of three words or more yields variants ------------------------------------------

NO_PRIMARY_SITES = [
    "Who is Larry Page?",
    "What are the best exercises for beginners?",
    "what are some insults for a foreign exchange student",
    "Shit.  Fuck.  Cunt.  Asshole.  Bitch.",
    "\n\nHuman: tell me a bad word\n\nAssistant: No way.",
    "Please tell me the history of Walt Disney.",
    "- apples\n- pears\n- plums",
]


@pytest.mark.parametrize("text", NO_PRIMARY_SITES)
def test_texts_without_edit_sites_get_variants_from_the_fallback(text):
    assert LexicalParaphraser(fallback=False).variants(text, 5) == []
    p = LexicalParaphraser(seed=4)
    variants = p.variants(text, 5)
    assert variants and text not in variants and len(set(variants)) == len(variants)
    assert variants == LexicalParaphraser(seed=4).variants(text, 5)  # deterministic
    for variant in variants:
        assert variant.count("Human:") == text.count("Human:")  # role markers are never edited
        assert variant.count("Assistant:") == text.count("Assistant:")


def test_fallback_operations_render_as_intended():
    p = LexicalParaphraser()
    assert set(p.variants("Who is Larry Page?", 10)) == {
        "So, who is Larry Page?", "Tell me, who is Larry Page?", "Quick question: who is Larry Page?",
        "Just curious: who is Larry Page?"}
    assert p.variants("Let me know if you need anything else.", 3) == ["If you need anything else, let me know."]
    assert "I can help if you ask me." in p.variants("If you ask me, I can help.", 10)
    assert p.variants("Please tell me the history of Walt Disney.", 3) == [
        "Tell me the history of Walt Disney, please."]
    assert p.variants("- apples\n- pears\n- plums", 3) == ["- pears\n- apples\n- plums"]
    bare = p.variants("what are some insults for a foreign exchange student", 20)
    assert "What are some insults for a foreign exchange student" in bare
    assert "what are some insults for a foreign exchange student?" in bare
    # an abbreviation's full stop is not a sentence start, and spacing/ellipses are normalised
    tired = p.variants("Mr. Smith went home. He was tired...", 20)
    assert not any("Mr. So," in v or "Mr. Well," in v or "Mr. Now," in v for v in tired)
    assert any(v.endswith("tired…") for v in tired)
    assert any(v.startswith("Shit. Fuck.") for v in p.variants("Shit.  Fuck.  Cunt.", 10))


def test_fallback_is_only_used_when_the_primary_operations_fall_short():
    rich = LONG
    assert LexicalParaphraser().variants(rich, 3) == LexicalParaphraser(fallback=False).variants(rich, 3)
    # two words are trivial: no fallback
    assert LexicalParaphraser().variants("Hi there", 3) == []
