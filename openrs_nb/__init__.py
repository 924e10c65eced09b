"""openrs_nb: a notebook-first reproduction of Open-RS (GRPO for reasoning in small LLMs)."""

__version__ = "0.1.0"
