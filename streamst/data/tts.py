"""Text to speech for synthetic corpora: espeak-ng through ctypes, with no apt and no network needed.

The espeak-ng C library and its voice data ship inside the `espeakng-loader` wheel (10 MB), so a corpus can be
built on a bare GPU machine. Where the wheel is missing but the `espeak-ng` program is installed, the program is
used instead. espeak-ng keeps global state, so one process synthesises one utterance at a time (a lock guards
it); run several processes for speed.
"""
from __future__ import annotations

import ctypes
import io
import os
import shutil
import subprocess
import threading
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ESPEAK_SAMPLE_RATE = 22050

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flag values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0

# English accents of espeak-ng: the name users write -> the voice file the library loads by name.
ACCENT_FILES: dict[str, str] = {
    "en-us": "gmw/en-US", "en-gb": "gmw/en", "en-gb-scotland": "gmw/en-GB-scotland", "en-gb-x-rp": "gmw/en-GB-x-rp",
    "en-gb-x-gbclan": "gmw/en-GB-x-gbclan", "en-gb-x-gbcwmd": "gmw/en-GB-x-gbcwmd", "en-029": "gmw/en-029",
    "en-us-nyc": "gmw/en-US-nyc",
}
ENGLISH_ACCENTS: tuple[str, ...] = tuple(ACCENT_FILES)
# Voice variants (`accent+variant`); the classic female f1..f5 and male m1..m7 ones.
VARIANTS: tuple[str, ...] = ("f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7")

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def english_voices() -> list[str]:
    """All English espeak-ng voices: each accent alone and with each f1..f5/m1..m7 variant."""
    return [a for a in ENGLISH_ACCENTS] + [f"{a}+{v}" for a in ENGLISH_ACCENTS for v in VARIANTS]


@dataclass
class _Library:
    """The loaded espeak-ng library and the buffer its callback fills."""

    lib: ctypes.CDLL
    sample_rate: int
    chunks: list[np.ndarray]
    callback: object  # keeps the ctypes callback alive as long as the library uses it


_lock = threading.Lock()
_library: _Library | None = None
_library_pid: int | None = None


def _wheel_paths() -> tuple[str, str] | None:
    """Library file and data folder from the espeakng-loader wheel, or None where it is not installed."""
    try:
        import espeakng_loader
    except ImportError:
        return None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def _load_library() -> _Library | None:
    """Load and initialise espeak-ng from the wheel once per process; None where the wheel is missing."""
    global _library, _library_pid
    if _library is not None and _library_pid == os.getpid():
        return _library
    paths = _wheel_paths()
    if paths is None:
        return None
    lib_path, data_path = paths
    lib = ctypes.CDLL(lib_path)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    # The path argument is the folder that holds `espeak-ng-data`.
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(Path(data_path).parent).encode(), 0)
    if rate <= 0:
        raise RuntimeError(f"espeak-ng failed to initialise from {data_path} (code {rate})")
    chunks: list[np.ndarray] = []

    def on_samples(samples, count, events):  # noqa: ARG001 - signature fixed by espeak-ng
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    callback = _CALLBACK(on_samples)
    lib.espeak_SetSynthCallback(callback)
    _library = _Library(lib=lib, sample_rate=rate, chunks=chunks, callback=callback)
    _library_pid = os.getpid()
    return _library


def library_info() -> tuple[str, str] | None:
    """(espeak-ng version, data folder in use) of the loaded library, or None where the wheel is missing."""
    library = _load_library()
    if library is None:
        return None
    library.lib.espeak_Info.restype = ctypes.c_char_p
    library.lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    data = ctypes.c_char_p()
    version = library.lib.espeak_Info(ctypes.byref(data))
    return version.decode(), (data.value or b"").decode()


def backend() -> str:
    """Which espeak-ng is used here: 'library' (the wheel), 'program' (the espeak-ng CLI) or 'none'."""
    if _wheel_paths() is not None:
        return "library"
    return "program" if shutil.which("espeak-ng") else "none"


def synthesize(text: str, voice: str = "en-us", *, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               volume: int = 100) -> tuple[np.ndarray, int]:
    """Speak `text` with an espeak-ng voice; returns (float32 mono samples in [-1, 1], sample rate).

    rate is in words per minute (80..450), pitch and pitch_range 0..100; voice is e.g. 'en-gb' or 'en-us+f3'.
    """
    if not text.strip():
        raise ValueError("synthesize: empty text")
    library = _load_library()
    if library is None:
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("no espeak-ng: `pip install espeakng-loader` (or install the espeak-ng program)")
        return _synthesize_program(text, voice, rate=rate, pitch=pitch, pitch_range=pitch_range, volume=volume)
    with _lock:
        lib = library.lib
        if lib.espeak_SetVoiceByName(_voice_file(voice).encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                             (_PARAM_VOLUME, volume)):
            lib.espeak_SetParameter(param, int(value), 0)
        library.chunks.clear()
        data = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with code {status}")
        samples = np.concatenate(library.chunks) if library.chunks else np.zeros(0, np.int16)
        library.chunks.clear()
    return samples.astype(np.float32) / 32768.0, library.sample_rate


def _voice_file(voice: str) -> str:
    """'en-gb+f3' -> 'gmw/en+f3': the library finds voices by file name, the program also by language name."""
    accent, plus, variant = voice.partition("+")
    return ACCENT_FILES.get(accent.lower(), accent) + plus + variant


def available_variants() -> list[str]:
    """Names of all voice variants in the espeak-ng data here (f1..f5, m1..m7 and named ones like 'Storm')."""
    paths = _wheel_paths()
    data = Path(paths[1]) if paths else Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data")
    folder = data / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else list(VARIANTS)


def _synthesize_program(text: str, voice: str, *, rate: int, pitch: int, pitch_range: int,
                        volume: int) -> tuple[np.ndarray, int]:
    """Fallback through the `espeak-ng` program writing a wav to stdout."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-a", str(volume),
           "--stdout", "-b", "1", text]
    del pitch_range  # the program has no option for the pitch range
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        sr = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return samples.astype(np.float32) / 32768.0, sr


def voice_exists(voice: str) -> bool:
    """True where espeak-ng accepts this voice name (tries it on a short word)."""
    try:
        audio, _ = synthesize("test", voice)
    except (ValueError, RuntimeError, subprocess.CalledProcessError):
        return False
    return audio.size > 0
