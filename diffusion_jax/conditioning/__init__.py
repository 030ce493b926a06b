"""Conditions: the kinds a model takes (labels, text, images), their nulls and
classifier-free guidance dropout; the text tokenizer."""
