"""Building blocks of scripts/build_tiny_model.py: worked solutions, tokenizer, training, evaluation."""
