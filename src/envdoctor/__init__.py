"""envdoctor: an environment doctor for fine-tuning LLMs on your own GPU machine."""

__version__ = "0.1.0"
