"""The learning loop: answer and vote logs, preference export, LoRA training, eval gate (issue 6)."""
