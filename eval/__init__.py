"""streamst.eval: latency and quality metrics that agree with SimulEval 1.1.4, OmniSTEval 0.1.10 and simulstream 1.0.0.

Modules: latency (short-form AL/LAAL/YAAL/DAL/AP/ATD/offsets and _CA), resegment (mwerSegmenter DP as
mweralign), softsegmenter (OmniSTEval alignment), longform (StreamLAAL, LongYAAL), quality (BLEU, chrF,
WER, CER), formats (instances.log, OmniSTEval JSONL, simulstream logs), score_cli (`streamst score`).

Deliberate differences from the reference tools (everything else agrees to 1e-6 ms in tests/test_oracles.py):
1. SimulEval 1.1.4 `--computation-aware` also makes AL/LAAL/AP/DAL/ATD computation-aware; plain columns
   here always use `delays` (as SimulEval main, 536de82).
2. Where SimulEval 1.1.4 raises and the whole corpus is lost (zero-length source with AL/LAAL/AP/DAL, an
   empty char-level reference with AL/AP, a missing source_length), that instance's metric is null with a
   warning and the corpus mean is over the rest. All instances undefined gives null (not an exception/NaN).
3. One reference length per instance, counted as SimulEval does, is used for every metric, YAAL included;
   OmniSTEval's CLI strips reference lines first (they differ only for leading/trailing spaces).
4. Long-form: a zero-duration segment is skipped with a warning (simulstream divides by zero, OmniSTEval
   drops the whole latency group); a trailing empty reference line keeps its (empty) segment where
   mweralign drops it and simulstream then fails; a talk of the segmentation missing from the log is an
   error naming it; talks are matched by file stem.
5. Moses tokenisation for LongYAAL (`--lang`) uses sacremoses (Python port) instead of the Perl script
   that OmniSTEval runs through `mosestokenizer`; identical LongYAAL/BLEU on the fixtures (en-de).
6. Malformed log lines are skipped with a warning naming file and line (`--strict` fails instead); the
   reference tools raise on them.
"""
