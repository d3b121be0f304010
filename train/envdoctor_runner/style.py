"""How close generated text is to an author's corpus, in three measures, each in [0, 1] (1 = the corpus):

  vocabulary   the share of generated words that occur in the corpus
  function     cosine similarity of the function-word profiles (how often "the", "of", "and", … occur per
               word): a classic authorship signal, independent of topic
  sentences    1 − the Kolmogorov–Smirnov distance between the sentence-length distributions (in words)

The style score is their mean. Pure Python, so it can be tested without a model."""

from __future__ import annotations

import math
import re

FUNCTION_WORDS = (
    "the of and to a in that is was he for it with as his on be at by i this had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so said what up "
    "its about into than them can only other new some could time these two may then do first any my now such like "
    "our over man me even most made after also did many before must through back years where much your way well "
    "down should because each just those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three").split()
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def sentence_lengths(text: str) -> list[int]:
    return [n for n in (len(words(s)) for s in _SENTENCE_END.split(text)) if n]


def vocabulary_overlap(generated: list[str], corpus_vocab: set[str]) -> float:
    gen = [w for t in generated for w in words(t)]
    return sum(w in corpus_vocab for w in gen) / len(gen) if gen else 0.0


def function_profile(texts: list[str]) -> list[float]:
    ws = [w for t in texts for w in words(t)]
    counts = dict.fromkeys(FUNCTION_WORDS, 0)
    for w in ws:
        if w in counts:
            counts[w] += 1
    return [counts[f] / max(len(ws), 1) for f in FUNCTION_WORDS]


def cosine(a: list[float], b: list[float]) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb) if na and nb else 0.0


def ks_distance(a: list[int], b: list[int]) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs (1 if empty)."""
    if not a or not b:
        return 1.0
    a, b = sorted(a), sorted(b)
    i = j = 0
    gap = 0.0
    for x in sorted(set(a) | set(b)):
        while i < len(a) and a[i] <= x:
            i += 1
        while j < len(b) and b[j] <= x:
            j += 1
        gap = max(gap, abs(i / len(a) - j / len(b)))
    return gap


def score(generated: list[str], corpus: list[str]) -> dict[str, float]:
    vocab = {w for t in corpus for w in words(t)}
    parts = {"vocabulary": vocabulary_overlap(generated, vocab),
             "function": cosine(function_profile(generated), function_profile(corpus)),
             "sentences": 1.0 - ks_distance([n for t in generated for n in sentence_lengths(t)],
                                            [n for t in corpus for n in sentence_lengths(t)])}
    parts["style_score"] = sum(parts.values()) / 3
    return parts
