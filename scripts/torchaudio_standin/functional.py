"""torchaudio.functional of the stand-in (see __init__.py): importable, every attribute raises."""

from torchaudio._standin import missing

__getattr__ = missing(__name__)
