"""Type stubs of ``shoal._native``, the Rust data path (native/src/py.rs)."""

__version__: str
