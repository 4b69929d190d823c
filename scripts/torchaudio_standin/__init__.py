"""A stand-in for torchaudio, not torchaudio.

Installed as `torchaudio` into the venv of a COMFYUI_SOURCE ComfyUI only, by scripts/install-comfyui.sh. PyPI has no
torchaudio for the CPU torch 2.13 of the local stack, and newer ComfyUIs import it at start-up (comfy/sd.py, through
their audio encoders), so without something importable they do not start. The SD1.5 workflows of the tests never
call it: every attribute of this package and its submodules raises, naming the stand-in, so that an audio node that
does call it fails loudly instead of computing something wrong.
"""

from torchaudio._standin import missing

__getattr__ = missing(__name__)
