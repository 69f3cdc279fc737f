"""s3t: exact machine unlearning for fine-tuned transformers."""

__version__ = "0.1.0"
