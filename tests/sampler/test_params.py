"""SamplingParams validation: bad values raise errors that name the field and the fix."""

import pytest

from alignkit.engine.sampler import SamplingParams


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), r"n=0: expected an int >= 1"),
    (dict(n=2.0), r"n=2.0"),
    (dict(n=True), r"n=True"),
    (dict(temperature=-0.1), r"temperature=-0.1: expected 0 \(greedy\) or a finite float >= 1e-06"),
    (dict(temperature=1e-40), r"temperature=1e-40: .*\(smaller ones overflow"),
    (dict(temperature=float("nan")), r"temperature=nan"),
    (dict(temperature=float("inf")), r"temperature=inf"),
    (dict(top_p=0.0), r"top_p=0.0: expected a float in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p=1.5"),
    (dict(top_k=-1), r"top_k=-1: expected an int >= 0"),
    (dict(min_p=1.2), r"min_p=1.2: expected a float in \[0, 1\]"),
    (dict(max_new_tokens=0), r"max_new_tokens=0: expected an int >= 1"),
    (dict(stop_token_ids=[2, -1]), r"stop_token_ids contains -1"),
    (dict(stop_token_ids=[2.5]), r"stop_token_ids contains 2.5"),
    (dict(stop_sequences=[[]]), r"stop_sequences contains \[\]: expected non-empty lists"),
    (dict(stop_sequences=[[3, "a"]]), r"stop_sequences contains token 'a'"),
    (dict(seed=-5), r"seed=-5: expected None or an int in \[0, 2\*\*63\)"),
    (dict(seed=2**63), r"seed=9223372036854775808"),
])
def test_invalid_field_raises_value_error_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(stop_token_ids=5), r"stop_token_ids=5: expected a list of token ids"),
    (dict(stop_sequences="</s>"), r"stop_sequences='</s>': expected a list of token-id lists"),
])
def test_wrong_container_type_raises_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        SamplingParams(**kwargs)


def test_string_stop_sequence_is_rejected_with_tokenize_hint():
    with pytest.raises(ValueError, match="tokenize stop strings first"):
        SamplingParams(stop_sequences=["stop"])


def test_valid_params_are_normalised_to_immutable_tuples():
    p = SamplingParams(n=4, temperature=1, top_p=1, stop_token_ids=[2, 7], stop_sequences=[[5, 6]], seed=3)
    assert p.stop_token_ids == (2, 7) and p.stop_sequences == ((5, 6),)
    assert isinstance(p.temperature, float) and p.temperature == 1.0
    assert p.max_token_id() == 7
    assert SamplingParams().max_token_id() == -1
    with pytest.raises(Exception):
        p.n = 5  # frozen
