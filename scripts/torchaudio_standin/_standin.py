"""What every module of the torchaudio stand-in answers to an attribute it does not have (all of them)."""


def missing(module: str):
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"{module}.{name}: this torchaudio is a stand-in installed by the comfyui-worker test stack "
            "(no torchaudio on PyPI matches its CPU torch), so audio operations are unavailable"
        )

    return __getattr__
