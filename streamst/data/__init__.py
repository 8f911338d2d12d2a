"""Corpora: offline text sources, espeak-ng speech synthesis, synthetic MuST-C-layout corpora and the MuST-C reader.

`tts.synthesize` speaks a sentence; `synth.build_corpus` writes a corpus in the MuST-C v1 layout; `mustc.read_split`
and `mustc.iter_talks` read real MuST-C and the synthetic corpora alike. See DATA_CARD.md for sources and licences.
"""
