"""Offline lexical paraphraser: meaning-preserving surface rewrites with no model and no network.

`LexicalParaphraser` finds *edit sites* in a text and rewrites a subset of them:

- synonyms from a curated table of common English words and phrases ("help" -> "assist", "quickly" ->
  "rapidly", "in order to" -> "to", "a lot of" -> "lots of", ...). Verb entries are skipped after determiners and
  prepositions ("the use of" stays), a few noun entries apply only after one, and entries carry word guards where an
  idiom would break ("used to", "as soon as", "take advantage of");
- contractions in both directions ("do not" <-> "don't", "it is" <-> "it's"), with the guards that keep grammar
  intact: "it is" is only contracted before a following word ("what it is." stays), and negations are not
  expanded before a pronoun ("don't you" stays, "do not you" would be wrong);
- discourse markers at sentence starts ("For example," <-> "For instance,", "However," <-> "That said,",
  "Finally," <-> "Lastly,", "Sure!" <-> "Certainly!").

Capitalisation (lower, Capitalised, UPPER), punctuation, numbers, whitespace, newlines and list structure are kept
exactly; "a"/"an" before a replaced word is adjusted. Text inside fenced code blocks (``` or ~~~), inline `code`,
URLs, e-mail addresses, HTML tags and LaTeX display/inline math delimited by ``$$``, ``\\(\\)``, ``\\[\\]`` is
never touched.

Fallback operations (used only when the operations above give fewer than `n` variants of a text of at least three
words, so that every non-trivial text can be augmented; `fallback=False` turns them off):

- clause fronting: "If X, Y." <-> "Y if X." (also unless/because/although), "Please do X." -> "Do X, please.";
- swaps of two adjacent items of an unordered (bullet) list;
- sentence openers: "So, " / "Well, " / "Now, " before a statement, "So, " / "Tell me, " / "Quick question: " /
  "Just curious: " before a question (the next word is lower-cased only when it is a function word); a leading
  "So"/"Well"/"Oh"/"Okay" may be dropped; a sentence that starts in lower case may be capitalised;
- a missing full stop (or question mark, for a line that starts like a question) at the end of a prose line;
- punctuation normalisation: two spaces after a stop become one, "..." <-> "…".

Dialogue role markers ("Human:", "Assistant:"), list markers and the protected regions are never edited.

Variants combine subsets of the edit sites. For a given (seed, text, n) the output is deterministic (the random
generator is seeded with a SHA-256 of the three, never Python's per-process `hash()`), the variants are distinct
and none equals the source. When a text has few edit sites, fewer than `n` variants come back (none for
one- and two-word texts such as "Hi there", and for texts that are only code); callers report the shortfall.
Coverage on the development data: `benchmarks/RESULTS.md` (lexical coverage).

Limits: the rewrites are surface-level only. Sentences are not reordered (only bullet items are), no
part-of-speech tagging is done (the context guards are heuristics, so a rare rewrite can read awkwardly, and an
opener can shift the tone a little), only English is covered, and diversity is low on very short texts. It is the
dependency-free default for offline runs and tests; use the `seq2seq` or `chat` back-ends for real paraphrase
diversity.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

__all__ = ["LexicalParaphraser", "protected_spans"]

# ---------------------------------------------------------------------------------------------------------------
# Synonym table: a package data file (augment/data/synonyms.txt), whose header documents the line format.
# ---------------------------------------------------------------------------------------------------------------
_SYNONYM_TABLE = (files("trl_mars.augment") / "data" / "synonyms.txt").read_text(encoding="utf-8")

# Words after which a verb reading is unlikely (so "v" entries are skipped) and which make a noun reading likely
# (so "n" entries apply).
_DETERMINERS = frozenset(
    """a an the this these those my your his her its our their some any no of for in into on with much more less
    such whose every each many several various other another different multiple few own first last best main
    great good what which""".split()
)

_PRONOUNS = frozenset("i you we they he she it there that this".split())

# Words after which a verb is taking an object ("help you", "needs a", "helped the").
_OBJECTS = frozenset(
    """me you him her us them it everyone everybody someone somebody others people a an the this that these those
    my your his its our their some any more""".split()
)

# ---------------------------------------------------------------------------------------------------------------
# Contractions.
# ---------------------------------------------------------------------------------------------------------------
_NEGATIONS = {
    "do not": "don't",
    "does not": "doesn't",
    "did not": "didn't",
    "is not": "isn't",
    "are not": "aren't",
    "was not": "wasn't",
    "were not": "weren't",
    "have not": "haven't",
    "has not": "hasn't",
    "had not": "hadn't",
    "will not": "won't",
    "would not": "wouldn't",
    "should not": "shouldn't",
    "could not": "couldn't",
    "cannot": "can't",
    "must not": "mustn't",
}
# Subject + auxiliary: contracted only before a following word ("I know what it is." keeps "it is").
_SUBJECT_FORMS = {
    "i am": "i'm",
    "you are": "you're",
    "we are": "we're",
    "they are": "they're",
    "it is": "it's",
    "that is": "that's",
    "there is": "there's",
    "he is": "he's",
    "she is": "she's",
    "what is": "what's",
    "here is": "here's",
    "i will": "i'll",
    "you will": "you'll",
    "we will": "we'll",
    "they will": "they'll",
    "it will": "it'll",
    "he will": "he'll",
    "she will": "she'll",
}
# Expansions only (the contracted form is ambiguous or unidiomatic in the other direction).
_EXPAND_ONLY = {
    "let's": "let us",
    "i've": "i have",
    "you've": "you have",
    "we've": "we have",
    "they've": "they have",
}
# "'s" forms that mean "has" before these words ("it's been" -> "it has been").
_HAS_NEXT = frozenset({"been", "got", "gotten", "had"})

# ---------------------------------------------------------------------------------------------------------------
# Discourse markers at sentence starts (followed by "," or, for interjections, "!").
# ---------------------------------------------------------------------------------------------------------------
_MARKER_GROUPS = [
    ("however", "that said"),
    ("for example", "for instance"),
    ("additionally", "in addition", "moreover", "furthermore", "also"),
    ("therefore", "thus", "consequently", "as a result", "hence"),
    ("finally", "lastly"),
    ("first", "firstly", "first of all"),
    ("second", "secondly"),
    ("third", "thirdly"),
    ("in summary", "to summarise", "to sum up", "in short"),
    ("in conclusion", "to conclude"),
    ("overall", "all in all", "on the whole"),
    ("of course", "naturally"),
    ("in other words", "put differently"),
    ("similarly", "likewise"),
    ("generally", "in general"),
    ("in fact", "indeed"),
    ("sure", "certainly"),
    ("unfortunately", "regrettably"),
    ("ultimately", "in the end"),
    ("meanwhile", "in the meantime"),
    ("alternatively", "as an alternative"),
    ("in my opinion", "in my view"),
    ("basically", "essentially"),
]
# Markers followed by " that": "Note that ..." -> "Keep in mind that ...".
_THAT_MARKERS = ("note", "keep in mind", "bear in mind", "remember")

# ---------------------------------------------------------------------------------------------------------------
# Protected regions: never edited.
# ---------------------------------------------------------------------------------------------------------------
_PROTECTED_RE = re.compile(
    r"```[\s\S]*?(?:```|\Z)"  # fenced code (an unterminated fence runs to the end)
    r"|~~~[\s\S]*?(?:~~~|\Z)"
    r"|``[^\n]+?``"  # inline code with double backticks
    r"|`[^`\n]+`"  # inline code
    r"|\$\$[\s\S]+?\$\$"  # display math
    r"|\\\([\s\S]+?\\\)|\\\[[\s\S]+?\\\]"
    r"|(?:https?|ftp)://\S+|www\.\S+"  # URLs
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # e-mail addresses
    r"|</?[A-Za-z][^<>\n]*>"  # HTML/XML tags
)


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Returns the (start, end) character spans that no back-end should rewrite: fenced and inline code, math,
    URLs, e-mail addresses and HTML tags."""
    return [m.span() for m in _PROTECTED_RE.finditer(text)]


# ---------------------------------------------------------------------------------------------------------------
# Compiled tables.
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    options: tuple[str, ...]
    kind: str  # "", "v" or "n"
    not_after: frozenset[str]
    not_before: frozenset[str]
    only_before: frozenset[str] | None = None
    only_after: frozenset[str] | None = None


def _parse_table(table: str) -> dict[str, list[_Rule]]:
    rules: dict[str, list[_Rule]] = {}

    def add(source: str, options: list[str], kind: str, after, before, only_before, only_after) -> None:
        options = [o for o in options if o != source]
        if options:
            rules.setdefault(source, []).append(_Rule(tuple(options), kind, after, before, only_before, only_after))

    for raw in table.strip().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        body, *constraints = [part.strip() for part in line.split(";")]
        after: frozenset[str] = frozenset()
        before: frozenset[str] = frozenset()
        only_before: frozenset[str] | None = None
        only_after: frozenset[str] | None = None
        for constraint in constraints:
            name, _, words = constraint.partition("=")
            values = frozenset(w.strip() for w in words.split(",") if w.strip())
            if "@object" in values:
                values = (values - {"@object"}) | _OBJECTS
            if name.strip() == "after":
                after = values
            elif name.strip() == "before":
                before = values
            elif name.strip() == "next":
                only_before = values
            elif name.strip() == "prev":
                only_after = frozenset("" if v == "^" else v for v in values)
            else:  # pragma: no cover - a malformed table line is a programming error
                raise ValueError(f"bad synonym-table constraint {constraint!r} in {raw!r}")
        kind = ""
        if body[:2] in ("v ", "n "):
            kind, body = body[0], body[2:].strip()
        if ">" in body:
            left, right = body.split(">", 1)
            # "a = b > c": a and b are symmetric, and both may also become c.
            members = [m.strip() for m in left.split("=")]
            extra = [o.strip() for o in right.split("|")]
            for member in members:
                others = [m for m in members if m != member] + extra
                add(member, others, kind, after, before, only_before, only_after)
        else:
            members = [m.strip() for m in body.split("=")]
            if len(members) < 2:  # pragma: no cover
                raise ValueError(f"bad synonym-table line {raw!r}")
            for member in members:
                add(member, [m for m in members if m != member], kind, after, before, only_before, only_after)
    return rules


_SYNONYMS = _parse_table(_SYNONYM_TABLE)

_CONTRACT = {**_NEGATIONS, **_SUBJECT_FORMS}
_EXPAND = {v: k for k, v in _CONTRACT.items()}
_EXPAND.update(_EXPAND_ONLY)

_WORD_RE = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
_GLUE_BEFORE = frozenset("'’@/\\.-_")  # a word touching one of these is part of a path, address or identifier
_GLUE_AFTER = frozenset("'’@/\\-_")


def _index(keys) -> dict[str, tuple[int, ...]]:
    """First word of each key -> the key lengths (in words) starting with it, longest first."""
    sizes: dict[str, set[int]] = {}
    for key in keys:
        parts = key.split(" ")
        sizes.setdefault(parts[0], set()).add(len(parts))
    return {first: tuple(sorted(s, reverse=True)) for first, s in sizes.items()}


_SYNONYM_INDEX = _index(_SYNONYMS)
_CONTRACTION_KEYS = frozenset(_CONTRACT) | frozenset(_EXPAND)
_CONTRACTION_INDEX = _index(_CONTRACTION_KEYS)


def _words(text: str) -> tuple[list[tuple[int, int]], list[str]]:
    spans, lowered = [], []
    for m in _WORD_RE.finditer(text):
        spans.append(m.span())
        lowered.append(m.group(0).lower().replace("’", "'"))
    return spans, lowered


def _scan(text: str, spans: list[tuple[int, int]], lowered: list[str], keys, index: dict[str, tuple[int, ...]]):
    """Leftmost-longest, non-overlapping matches of `keys` (lower-case, single-spaced phrases) over the words.

    Words of a phrase must be separated by exactly one space or tab (a phrase never spans a line break), and a
    match must not touch a letter, digit or identifier glue ("use-case", "file.use", "x@help") on either side.
    """
    n = len(spans)
    length = len(text)
    i = 0
    while i < n:
        sizes = index.get(lowered[i])
        matched = False
        if sizes:
            for size in sizes:
                j = i + size - 1
                if j >= n:
                    continue
                if size > 1:
                    if any(text[spans[k][1] : spans[k + 1][0]] not in (" ", "\t") for k in range(i, j)):
                        continue
                    key = " ".join(lowered[i : j + 1])
                    if key not in keys:
                        continue
                else:
                    key = lowered[i]
                    if key not in keys:
                        continue
                start, end = spans[i][0], spans[j][1]
                if start > 0:
                    before = text[start - 1]
                    if before.isalnum() or before in _GLUE_BEFORE:
                        continue
                if end < length:
                    after = text[end]
                    if after.isalnum() or after in _GLUE_AFTER:
                        continue
                    if after == "." and end + 1 < length and (text[end + 1].isalnum() or text[end + 1] == "_"):
                        continue
                yield start, end, key
                i = j + 1
                matched = True
                break
        if not matched:
            i += 1


def _alternation(keys) -> str:
    # Longest first so that phrases win over their first word; a space in a key matches exactly one space or tab.
    ordered = sorted(keys, key=len, reverse=True)
    return "|".join(re.escape(k).replace(r"\ ", "[ \t]").replace("'", "['’]") for k in ordered)


_MARKERS: dict[str, tuple[str, ...]] = {}
for _group in _MARKER_GROUPS:
    for _member in _group:
        _MARKERS.setdefault(_member, ())
        _MARKERS[_member] += tuple(m for m in _group if m != _member and m not in _MARKERS[_member])
_LINE_START = r"(?:^[ \t]*(?:(?:[-*+•]|\d+[.)]|#{1,6}|>)[ \t]+)?|[.!?][\"'”’)\]]*[ \t]+)"
_MARKER_RE = re.compile(
    r"(?m)" + _LINE_START + r"(?P<marker>" + _alternation(_MARKERS) + r")(?=,|!(?!\w))", re.IGNORECASE
)
_THAT_RE = re.compile(
    r"(?m)" + _LINE_START + r"(?P<marker>" + _alternation(_THAT_MARKERS) + r")(?=[ \t]that\b)", re.IGNORECASE
)

_PREV_WORD_RE = re.compile(r"([A-Za-z][A-Za-z'’]*)[ \t]+\Z")
_NEXT_WORD_RE = re.compile(r"[ \t]+([A-Za-z][A-Za-z'’]*)")
_ARTICLE_RE = re.compile(r"(?<![\w'’])(a|an|A|An|AN)([ \t]+)\Z")
_WS_RE = re.compile(r"[ \t]+")


def _prev_word(text: str, start: int) -> str | None:
    m = _PREV_WORD_RE.search(text, max(0, start - 40), start)
    return m.group(1).lower().replace("’", "'") if m else None


def _next_word(text: str, end: int) -> str | None:
    m = _NEXT_WORD_RE.match(text, end, min(len(text), end + 40))
    return m.group(1).lower().replace("’", "'") if m else None


def _match_case(source: str, replacement: str) -> str:
    letters = [c for c in source if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return replacement.upper()
    if source[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _fix_pronoun_i(text: str) -> str:
    # The tables are lower-case; the pronoun "I" is always upper-case ("i'm" -> "I'm", "i am" -> "I am").
    return re.sub(r"\bi(?=\b|['’])", "I", text) if "i" in text else text


_AN_EXCEPTIONS = ("uni", "use", "usu", "uti", "eu", "one", "once", "ewe")
_AN_H_WORDS = ("hour", "honest", "honour", "honor", "heir")


def _wants_an(word: str) -> bool:
    w = word.lower()
    if w.startswith(_AN_H_WORDS):
        return True
    if w.startswith(_AN_EXCEPTIONS):
        return False
    return w[:1] in "aeiou"


# ---------------------------------------------------------------------------------------------------------------
# Fallback operations: used only when the operations above give fewer than `n` variants of a text of at least
# `FALLBACK_MIN_WORDS` words, so that every non-trivial text can be augmented (the pairs MARS targets most must not
# be the ones it cannot augment). They change structure or framing, never content words.
# ---------------------------------------------------------------------------------------------------------------
FALLBACK_MIN_WORDS = 3

# Sentence starts: a line start (after a list bullet, a heading mark, a quote mark or a dialogue role such as
# "Human:"), or the space after sentence-ending punctuation.
_FALLBACK_LINE_START = re.compile(
    r"(?m)^[ \t]*(?:(?:[-*+•]|\d+[.)]|#{1,6}|>)[ \t]+)?(?:(?:Human|Assistant|User|System|H|A):[ \t]*)?(?=[A-Za-z])"
)
_FALLBACK_AFTER_STOP = re.compile(r"(?<=[.!?])[\"'”’)\]]*[ \t]+(?=[A-Za-z])")
# Words before a full stop that does not end a sentence.
_ABBREVIATIONS = frozenset("mr mrs ms dr st vs etc eg ie jr sr prof no fig approx inc ltd co e.g i.e".split())
# Sentence-initial words that are lower-cased after an inserted marker ("The cat" -> "Well, the cat"); any other
# word (a name, "I", an acronym) keeps its capital.
_LOWER_AFTER_MARKER = frozenset(
    """a an the this that these those there here it its you your we our they their he his she her my some any
    many most all each every if when what how why where who whom whose which can could would should do does did
    is are was were will shall may might must have has had to in on at for with as one no not""".split()
)
# Markers put in front of a sentence: for statements, and for questions (a sentence that ends with "?").
_STATEMENT_OPENERS = ("Well, ", "So, ", "Now, ")
_QUESTION_OPENERS = ("So, ", "Tell me, ", "Quick question: ", "Just curious: ")
# "Please tell me X." <-> "Tell me X, please."
_LEADING_PLEASE = re.compile(r"Please,?[ \t]+(?P<rest>[A-Za-z][^.!?\n]*?)(?P<stop>[.!?])")
_NO_OPENER_BEFORE = frozenset({"well", "so", "and", "but", "or", "please", "okay", "ok", "oh"})
# Openers that may be dropped ("So you'd ..." -> "You'd ...", "Well, what ..." -> "What ...").
_DROPPABLE_OPENER = re.compile(r"(?P<opener>(?:So|Well|Oh|Okay|OK|Ok)(?:,[ \t]*|[ \t]+))(?P<word>[A-Za-z][A-Za-z'’]*)")
# A sentence that starts with one of these is a question (for the full stop a bare line gets).
_QUESTION_WORDS = frozenset(
    "what how why where who whom whose which when can could would should do does did is are was were will shall "
    "may might am".split()
)
# Clause fronting: "If X, Y." <-> "Y if X." for subordinators whose clause can move without changing the meaning.
_FRONTED_CLAUSE = re.compile(
    r"(?P<sub>If|Unless|Because|Although|Though|Whenever|Once)[ \t]+(?P<clause>[^,.;:!?\n]+?),[ \t]+"
    r"(?P<main>[^,.;:!?\n]+?)(?P<stop>[.!?])"
)
_TRAILING_CLAUSE = re.compile(
    r"(?P<main>[A-Z][^,.;:!?\n]*?[A-Za-z])[ \t]+(?P<sub>if|unless|because|although)[ \t]+"
    r"(?P<clause>[^,.;:!?\n]+?)(?P<stop>[.!?])"
)
_LIST_ITEM_PREFIX = re.compile(r"(?:^|\n)[ \t]*(?:[-*+•]|\d+[.)])[ \t]+\Z")
_BULLET_LINE = re.compile(r"(?m)^(?P<mark>[ \t]*[-*•][ \t]+)(?P<body>[^\n]+)$")
_DOUBLE_SPACE = re.compile(r"(?<=[.!?,;:])[ \t]{2,}(?=\S)")
_ELLIPSIS = re.compile(r"\.\.\.(?!\.)|…")


def _lower_first(word: str) -> str:
    return word[:1].lower() + word[1:] if word.lower() in _LOWER_AFTER_MARKER and not word.isupper() else word


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence_starts(text: str) -> list[int]:
    starts = {m.end() for m in _FALLBACK_LINE_START.finditer(text)}
    for m in _FALLBACK_AFTER_STOP.finditer(text):
        before = re.search(r"([A-Za-z.]+)[.!?][\"'”’)\]]*\Z", text[max(0, m.start() - 12) : m.start()])
        if before and (before.group(1).lower() in _ABBREVIATIONS or len(before.group(1)) == 1):
            continue  # "Mr. Smith", "e.g. this", "J. Doe": not a sentence start
        starts.add(m.end())
    return sorted(starts)


def _sentence_end(text: str, start: int) -> tuple[int, str]:
    """(index just past the sentence's stop or its line end, the stop character or "")."""
    m = re.compile(r"[.!?]|\n").search(text, start)
    if m is None:
        return len(text.rstrip()), ""
    if m.group(0) == "\n":
        return len(text[:m.start()].rstrip()), ""
    return m.end(), m.group(0)


@dataclass(frozen=True)
class _Site:
    start: int
    end: int
    options: tuple[str, ...]


class LexicalParaphraser:
    """Deterministic, offline surface rewrites; see the module docstring for the operations and limits.

    Args:
        seed: mixes into the per-text random generator; different seeds give different variant choices.
    """

    name = "lexical"

    def __init__(self, seed: int = 0, fallback: bool = True):
        self.seed = int(seed)
        self.fallback = bool(fallback)

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": "lexical", "version": 2, "seed": self.seed, "fallback": self.fallback}

    # ----- edit sites -----
    def edit_sites(self, text: str, fallback: bool = False) -> list[_Site]:
        """All non-overlapping edit sites of `text`, in order (markers win over contractions over synonyms; with
        `fallback`, the fallback operations fill in where those leave room)."""
        occupied: list[tuple[int, int]] = sorted(protected_spans(text))
        starts = [s for s, _ in occupied]
        sites: list[_Site] = []

        def free(start: int, end: int) -> bool:
            i = bisect.bisect_right(starts, start)
            if i > 0 and occupied[i - 1][1] > start:
                return False
            return not (i < len(occupied) and occupied[i][0] < end)

        def take(start: int, end: int, options: Sequence[str], keep_case: bool = False) -> None:
            if not options or not free(start, end):
                return
            source = text[start:end]
            rendered = []
            apostrophe = "’" if "’" in source or ("’" in text and "'" not in text) else "'"
            for option in options:
                out = option if keep_case else _fix_pronoun_i(_match_case(source, option)).replace("'", apostrophe)
                if out != source and out not in rendered:
                    rendered.append(out)
            if not rendered:
                return
            i = bisect.bisect_right(starts, start)
            starts.insert(i, start)
            occupied.insert(i, (start, end))
            sites.append(_Site(start, end, tuple(rendered)))

        for regex in (_MARKER_RE, _THAT_RE):
            for m in regex.finditer(text):
                key = _WS_RE.sub(" ", m.group("marker").lower())
                options = _MARKERS.get(key) or tuple(k for k in _THAT_MARKERS if k != key)
                take(m.start("marker"), m.end("marker"), options)

        spans, lowered = _words(text)
        for start, end, key in _scan(text, spans, lowered, _CONTRACTION_KEYS, _CONTRACTION_INDEX):
            nxt = _next_word(text, end)
            if key in _CONTRACT:
                if key in _SUBJECT_FORMS and nxt is None:
                    continue
                take(start, end, (_CONTRACT[key],))
            elif key in _EXPAND:
                expanded = _EXPAND[key]
                if key in _NEGATIONS.values() and nxt in _PRONOUNS:
                    continue  # "don't you" must not become "do not you"
                if key.endswith("'s") and nxt in _HAS_NEXT:
                    expanded = expanded.rsplit(" ", 1)[0] + " has"
                take(start, end, (expanded,))

        for start, end, key in _scan(text, spans, lowered, _SYNONYMS, _SYNONYM_INDEX):
            rules = _SYNONYMS[key]
            prev = nxt = None
            options: list[str] = []
            for rule in rules:
                if rule.kind or rule.not_after or rule.only_after is not None:
                    prev = prev if prev is not None else (_prev_word(text, start) or "")
                if rule.not_before or rule.only_before is not None:
                    nxt = nxt if nxt is not None else (_next_word(text, end) or "")
                if rule.kind == "v" and prev in _DETERMINERS:
                    continue
                if rule.kind == "n" and prev not in _DETERMINERS:
                    continue
                if prev in rule.not_after or nxt in rule.not_before:
                    continue
                if rule.only_before is not None and nxt not in rule.only_before:
                    continue
                if rule.only_after is not None and prev not in rule.only_after:
                    continue
                options.extend(o for o in rule.options if o not in options)
            take(start, end, options)

        if fallback:
            self._fallback_sites(text, take)
        sites.sort(key=lambda s: s.start)
        return sites

    @staticmethod
    def _fallback_sites(text: str, take) -> None:
        """Clause fronting, swaps of adjacent bullet items, sentence openers and capitals, a missing full stop,
        spacing and ellipses; bigger edits first, so that they win where sites overlap."""
        starts = _sentence_starts(text)
        for start in starts:
            end, stop = _sentence_end(text, start)
            sentence = text[start:end]
            m = _FRONTED_CLAUSE.fullmatch(sentence)
            if m and len(m.group("main").split()) >= 2:
                take(start, end, (f"{_capitalise(m.group('main'))} {m.group('sub').lower()} {m.group('clause')}"
                                  f"{m.group('stop')}",))
                continue
            m = _LEADING_PLEASE.fullmatch(sentence)
            if m and len(m.group("rest").split()) >= 2:
                take(start, end, (f"{_capitalise(m.group('rest'))}, please{m.group('stop')}",), keep_case=True)
                continue
            m = _TRAILING_CLAUSE.fullmatch(sentence)
            if m and len(m.group("main").split()) >= 2 and len(m.group("clause").split()) >= 2:
                main = m.group("main")
                head = main.split(" ", 1)[0]
                if not (head == "I" or head.startswith(("I'", "I’")) or head.isupper()):
                    main = head[:1].lower() + main[1:]
                take(start, end, (f"{_capitalise(m.group('sub'))} {m.group('clause')}, {main}{m.group('stop')}",))

        bullets = list(_BULLET_LINE.finditer(text))
        for a, b in zip(bullets, bullets[1:]):
            if a.end() + 1 == b.start() and a.group("mark") == b.group("mark") and a.group("body") != b.group("body"):
                take(a.start(), b.end(), (f"{a.group('mark')}{b.group('body')}\n{b.group('mark')}{a.group('body')}",))

        for start in starts:
            word = _WORD_RE.match(text, start)
            if word is None or text[word.end() : word.end() + 1] == ":":
                continue  # a role marker or a label ("Human:", "Note:")
            if _LIST_ITEM_PREFIX.search(text, max(0, start - 12), start):
                continue  # list items keep their style; they get swaps instead
            first = word.group(0)
            dropped = _DROPPABLE_OPENER.match(text, start)
            if dropped and text[dropped.end() : dropped.end() + 1] != ":":
                nxt = dropped.group("word")
                take(start, dropped.end(), (_capitalise(nxt),), keep_case=True)
                continue
            options: list[str] = []
            if first[:1].islower():
                options.append(_capitalise(first))
            if first.lower() not in _NO_OPENER_BEFORE and first.lower() not in _MARKERS:
                _, stop = _sentence_end(text, start)
                openers = _QUESTION_OPENERS if stop == "?" else _STATEMENT_OPENERS
                options.extend(opener + _lower_first(first) for opener in openers)
            # the case of the source word must not be imposed on the opener: render each option exactly
            take(word.start(), word.end(), options, keep_case=True)

        for line in re.finditer(r"(?m)^(?P<body>[^\n]*[A-Za-z0-9])[ \t]*$", text):
            body = line.group("body")
            if len(body.split()) < FALLBACK_MIN_WORDS or re.match(r"[ \t]*(?:[-*+•]|\d+[.)])[ \t]+", body):
                continue
            last_start = max([s for s in starts if line.start() <= s < line.end()] or [line.start()])
            found = _WORD_RE.search(text, last_start, line.end()) or _WORD_RE.search(body)
            first = found.group(0).lower() if found else ""
            position = line.start() + len(body)
            take(position, position, ("?" if first in _QUESTION_WORDS else ".",), keep_case=True)

        for m in _DOUBLE_SPACE.finditer(text):
            take(m.start(), m.end(), (" ",), keep_case=True)
        for m in _ELLIPSIS.finditer(text):
            take(m.start(), m.end(), ("…" if m.group(0) == "..." else "...",), keep_case=True)

    # ----- variants -----
    @staticmethod
    def _render(text: str, sites: Sequence[_Site], choice: Sequence[int]) -> str:
        """`choice[i]` = 0 keeps site i, k > 0 applies its (k-1)-th option."""
        parts: list[str] = []
        pos = 0
        for site, k in zip(sites, choice):
            if not k:
                continue
            gap = text[pos : site.start]
            replacement = site.options[k - 1]
            article = _ARTICLE_RE.search(gap)
            if article and replacement[:1].isalpha():
                art = article.group(1)
                want = "an" if _wants_an(replacement) else "a"
                if art.lower() != want:
                    if art.isupper() and (len(art) > 1 or (len(replacement) > 1 and replacement.isupper())):
                        new = want.upper()
                    elif art[0].isupper():
                        new = want.capitalize()
                    else:
                        new = want
                    gap = gap[: article.start(1)] + new + gap[article.end(1) :]
            parts.append(gap)
            parts.append(replacement)
            pos = site.end
        parts.append(text[pos:])
        return "".join(parts)

    def _rng(self, text: str, n: int) -> random.Random:
        digest = hashlib.sha256(f"lexical\x00{self.seed}\x00{n}\x00{text}".encode("utf-8", "surrogatepass"))
        return random.Random(int.from_bytes(digest.digest()[:8], "big"))

    def variants(self, text: str, n: int) -> list[str]:
        """Up to `n` distinct rewrites of `text`, none equal to it."""
        if n <= 0 or not text:
            return []
        sites = self.edit_sites(text)
        if self.fallback and _combinations(sites) - 1 < n and len(text.split()) >= FALLBACK_MIN_WORDS:
            sites = self.edit_sites(text, fallback=True)
        if not sites:
            return []
        rng = self._rng(text, n)
        sizes = [len(s.options) + 1 for s in sites]
        seen = {text}
        out: list[str] = []

        total = math.prod(sizes) if len(sites) <= 20 else math.inf
        if total - 1 <= 4 * n + 16:
            # Few combinations: enumerate all of them and pick n in a seeded order.
            choices = list(itertools.product(*(range(k) for k in sizes)))[1:]
            rng.shuffle(choices)
        else:
            choices = _sampled_choices(rng, sizes, tries=max(10 * n, 40))
        for choice in choices:
            variant = self._render(text, sites, choice)
            if variant not in seen:
                seen.add(variant)
                out.append(variant)
                if len(out) == n:
                    break
        return out

    def paraphrase(self, texts: Sequence[str], n: int) -> list[list[str]]:
        """For each text, up to `n` distinct surface rewrites (fewer when the text has few edit sites)."""
        return [self.variants(text, n) for text in texts]


def _combinations(sites: Sequence[_Site]) -> float:
    return math.prod(len(s.options) + 1 for s in sites) if len(sites) <= 20 else math.inf


def _sampled_choices(rng: random.Random, sizes: list[int], tries: int):
    """Many combinations: random subsets of up to half the edit sites (at least one edit each), lazily."""
    m = len(sizes)
    max_edits = max(1, math.ceil(m / 2))
    for _ in range(tries):
        k = rng.randint(1, max_edits)
        choice = [0] * m
        for i in rng.sample(range(m), k):
            choice[i] = rng.randrange(1, sizes[i])
        yield choice
