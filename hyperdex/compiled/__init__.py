"""hyperdex.compiled: what the compiler writes and the runtime reads, in the layer below both.

``folder.py`` finds a compiled folder, verifies it (the checksums compile.json records) and
reads its records, ``record.py`` is the converted model record (``hyperdex_config.json`` +
``hyperdex_model.bin``), ``schema.py`` checks the structure of the JSON records and
``session.py`` opens a device session on a compiled folder. The compiler
(``hyperdex.tools``) and the runtime (``hyperdex.transformers``) both import this package and
never each other (docs/architecture.md, "Layers")."""
