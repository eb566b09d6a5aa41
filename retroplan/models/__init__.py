from .gpt import GPT, PRESETS, GPTConfig, generate, generate_with_logprobs

__all__ = ["GPT", "GPTConfig", "PRESETS", "generate", "generate_with_logprobs"]
