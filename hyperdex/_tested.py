"""The versions of hyperdex's direct dependencies that the test suite ran on.

Written by ``python3 scripts/deps.py lock`` from constraints.txt; do not edit.
"""

TESTED = {
    "filelock": "4.3.2",
    "gguf": "0.19.0",
    "llguidance": "1.9.1",
    "matplotlib": "3.11.2",
    "numpy": "2.4.6",
    "prometheus-client": "0.26.0",
    "pydantic": "2.14.4",
    "pyyaml": "6.0.4",
    "ray": "2.60.0",
    "safetensors": "0.8.0",
    "starlette": "1.10.0",
    "torch": "2.13.0+cpu",
    "tqdm": "4.70.1",
    "transformers": "5.25.0",
    "uvicorn": "0.55.0",
}
