"""ragft: the library behind "RAG vs fine-tuning, measured".

Importing it sets the offline network policy before any Hugging Face library is imported.
"""

from .settings import apply_network_policy as _apply_network_policy

_apply_network_policy()

__version__ = "0.1.0"
