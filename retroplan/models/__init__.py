from .gpt import GPT, PRESETS, GPTConfig, generate

__all__ = ["GPT", "GPTConfig", "PRESETS", "generate"]
