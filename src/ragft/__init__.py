"""ragft: the library behind "RAG vs fine-tuning, measured".

Importing it sets the offline network policy before any Hugging Face library is imported, and the
CPU kernels (AVX2 on every x86 machine) before PyTorch computes anything.
"""

from .settings import apply_network_policy as _apply_network_policy
from .settings import pin_cpu_kernels as _pin_cpu_kernels

_apply_network_policy()
_pin_cpu_kernels()

__version__ = "0.1.0"
