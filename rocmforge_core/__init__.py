"""rocmforge core: GGUF models, tokenizers, model math, backends and the inference engine.

Front ends (rocmforge_cli, the HTTP server) build on this package; it never imports them, nor any
terminal or HTTP library.
"""

__version__ = "0.1.0"
