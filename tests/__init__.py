"""Test package. Importing aeic_codec first sets MKL's reproducibility mode before torch loads."""

import aeic_codec  # noqa: F401
