"""Plain ``nn.Module`` models (no distributed code): Whisper encoder helpers, projectors, WeST."""
