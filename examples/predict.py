"""Entry point for `python examples/predict.py [flags]` (same flags as `maskmatch-predict`)."""

from maskmatch_hf.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
