"""The style measures of `envdoctor eval` (train/envdoctor_runner/style.py), on texts whose answers are known."""

import sys

from envdoctor.assets import asset

sys.path.insert(0, str(asset("train")))
from envdoctor_runner import style  # noqa: E402

CORPUS = ["The rain came down on the old town. It was late, and the streets were empty of men.",
          "She said that the river was high. It had rained for three days and the bridge was gone."]


def test_the_corpus_scores_one_against_itself():
    s = style.score(CORPUS, CORPUS)
    assert s["vocabulary"] == 1.0 and abs(s["function"] - 1.0) < 1e-9 and s["sentences"] == 1.0
    assert abs(s["style_score"] - 1.0) < 1e-9


def test_random_letters_score_lower_than_corpus_like_text():
    near = ["The rain was high on the old bridge. It came down and the town was empty."]
    far = ["xqzt vwpl krrm zzyx qwop. plmk zzz vvvv qqq"]
    assert style.score(near, CORPUS)["style_score"] > style.score(far, CORPUS)["style_score"] + 0.3
    assert style.score(far, CORPUS)["vocabulary"] == 0.0


def test_ks_distance_and_sentence_lengths():
    assert style.ks_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert style.ks_distance([1, 1, 1], [9, 9, 9]) == 1.0
    assert style.ks_distance([], [1]) == 1.0
    assert style.sentence_lengths("One two three. Four five! Six?") == [3, 2, 1]
