"""Reversed-digit addition: prompts, reference answers, the verifier and the train/eval split."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignkit.engine.task.arithmetic import (
    Problem, all_problems, corpus, is_correct, parse_prompt, split_problems,
)


def test_prompt_and_reversed_answer_written_by_hand():
    assert Problem(37, 45).prompt == "37+45="
    assert Problem(37, 45).answer == "28"  # 37 + 45 = 82, digits reversed
    assert Problem(99, 99).answer == "891"  # 198 reversed
    assert Problem(0, 0).answer == "0"
    assert Problem(5, 50).answer == "55"


@given(st.integers(0, 999), st.integers(0, 999))
def test_answer_read_backwards_is_the_sum(a, b):
    assert int(Problem(a, b).answer[::-1]) == a + b


def test_verifier_accepts_only_the_exact_reversed_sum():
    assert is_correct("37+45=", "28")
    assert is_correct("37+45=", " 28\n")  # surrounding whitespace is not an error
    assert not is_correct("37+45=", "82")  # the unreversed sum is wrong
    assert not is_correct("37+45=", "280")
    assert not is_correct("37+45=", "")
    assert not is_correct("37+45=", "2 8")


@pytest.mark.parametrize("bad", ["37+45", "37-45=", "a+4=", "1+2+3="])
def test_parse_prompt_rejects_other_text(bad):
    with pytest.raises(ValueError, match="addition prompt"):
        parse_prompt(bad)


def test_split_is_disjoint_sized_and_seeded():
    train, held_out = split_problems(2, 3000, 400, seed=7)
    assert len(train) == 3000 and len(held_out) == 400
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}
    assert split_problems(2, 3000, 400, seed=7) == (train, held_out)
    assert split_problems(2, 3000, 400, seed=8)[1] != held_out


def test_split_larger_than_the_problem_space_is_an_error():
    assert len(all_problems(1)) == 100  # 10 x 10 one-digit pairs
    with pytest.raises(ValueError, match="task.n_train"):
        split_problems(1, 90, 20, seed=0)


def test_corpus_is_prompt_then_answer():
    assert corpus([Problem(12, 9)]) == ["12+9=12"]  # 21 reversed
