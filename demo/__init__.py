"""``make demo``: an offline end-to-end MoCa pipeline on a small generated multimodal world."""
