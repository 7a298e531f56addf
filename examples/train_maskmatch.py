"""Entry point for `accelerate launch examples/train_maskmatch.py [flags]` (same flags as `maskmatch-train`)."""

from maskmatch_hf.train import main

if __name__ == "__main__":
    raise SystemExit(main())
