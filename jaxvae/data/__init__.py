"""Data: datasets as arrays, user files, TFDS, preprocessing, tokenizers."""
