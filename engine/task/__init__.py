"""The built-in task: reversed-digit addition, a tokenizer and a tiny Llama trained at run time.

`tools/train` with no arguments runs `alignkit.engine.task.recipe.main`: SFT warm-up, then DPO on
verifier-labelled pairs sampled from the SFT model, reporting held-out exact match before and after.
"""
