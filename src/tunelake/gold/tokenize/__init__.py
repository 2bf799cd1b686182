"""Tokenize gold SFT records with the model's own chat template, audit the loss masks, and pack them."""
