import os

# Progress bars off in tests (and in anything the tests start).
os.environ.setdefault("DIFFUSION_LAB_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
