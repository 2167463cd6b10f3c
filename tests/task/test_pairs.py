"""Preference pairs: a correct and an incorrect sample of the same prompt, likeliest mistakes first."""

from alignkit.engine.task.arithmetic import is_correct
from alignkit.engine.task.pairs import build_pairs


def test_pairs_join_correct_and_incorrect_of_the_same_prompt():
    prompts = ["37+45=", "10+10=", "1+1=", "9+9="]
    samples = [
        ["28", "82", "28", "82", "27", "82"],  # 82 is the most frequent mistake, then 27
        ["02", "02"],                          # all correct: nothing to prefer against
        ["3", "4"],                            # all wrong: no correct answer to prefer
        ["81", "18", ""],                      # empty completion is an incorrect answer too
    ]
    rows = build_pairs(prompts, samples, is_correct, max_pairs_per_prompt=2)
    assert rows == [
        {"prompt": "37+45=", "chosen": "28", "rejected": "82"},
        {"prompt": "37+45=", "chosen": "28", "rejected": "27"},
        {"prompt": "9+9=", "chosen": "81", "rejected": "18"},
        {"prompt": "9+9=", "chosen": "81", "rejected": ""},
    ]
    for row in rows:
        assert is_correct(row["prompt"], row["chosen"]) and not is_correct(row["prompt"], row["rejected"])


def test_max_pairs_per_prompt_caps_the_rows():
    rows = build_pairs(["37+45="], [["28", "1", "2", "3"]], is_correct, max_pairs_per_prompt=1)
    assert len(rows) == 1 and rows[0]["chosen"] == "28"
