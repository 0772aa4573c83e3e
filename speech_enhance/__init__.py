"""speech-enhance: noisy-speech datasets, speech-denoising models, evaluation and tuning on Ray.

Subpackages, bottom layer first: :mod:`speech_enhance.pipeline` (audio, DSP, storage, the
dataset format, Ray connection and the Ray Data build), :mod:`speech_enhance.model`
(networks, losses, Ray Train training, evaluation, enhancement), :mod:`speech_enhance.tune`
(Ray Tune search), and the command line (:mod:`speech_enhance.cli`).
"""

import os as _os

# In a source checkout (and in a Ray ``working_dir`` upload of one) the subpackages are the
# top-level folders pipeline/, model/ and tune/ beside this one, which an install maps to
# speech_enhance.* (pyproject.toml): let the same names import from the checkout.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "pipeline")) and _os.path.isfile(
        _os.path.join(_checkout, "pipeline", "__init__.py")):
    __path__.append(_checkout)
