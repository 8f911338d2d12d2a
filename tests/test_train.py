"""`streamst train` on a tiny synthetic MuST-C-layout corpus: checkpoints, exact resume (also after SIGKILL),
averaging, model cards, dev scores, bad manifest entries, clear errors, encoder initialisation, DDP on CPU."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from streamst.checkpoint import load_model, read_checkpoint
from streamst.cli import main
from streamst.data import synth
from streamst.training.average import average_state_dicts, step_checkpoints

from test_data import PAIRS  # the same twelve en-de sentence pairs

CONFIG = synth.SynthConfig(pairs=("en-de",), test_voices=("en-gb-scotland+f2",), talk_seconds=(8.0, 14.0), seed=3,
                           dev_fraction=0.15, test_fraction=0.2)
# a model small enough that a few updates take a moment on 2 busy cores
MICRO = ["--d-model", "32", "--heads", "2", "--enc-layers", "2", "--dec-layers", "1", "--sub-channels", "4",
         "--conv-kernel", "5", "--left-frames", "8", "--src-vocab", "60", "--tgt-vocab", "60", "--max-frames", "500",
         "--warmup", "2", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    synth.build_corpus(root, CONFIG, pair_sources={"en-de": PAIRS})
    return root


def train(corpus: Path, out: Path, *extra: str) -> int:
    return main(["train", "--corpus", str(corpus), "--pair", "en-de", "--out", str(out), *MICRO, *extra])


def weights(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    return obj["net"] if "net" in obj else obj["state_dict"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight_run(corpus, tmp_path_factory) -> Path:
    """Six uninterrupted updates, checkpoints every two, dev scored every two, the last two averaged."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train(corpus, out, "--steps", "6", "--save-every", "2", "--dev-every", "2", "--average-last", "2") == 0
    return out


def test_training_writes_checkpoints_averaged_model_and_card(straight_run):
    out = straight_run
    assert [p.name for p in step_checkpoints(out)] == ["step2.pt", "step4.pt", "step6.pt"]
    model = load_model(str(out / "model.pt"))  # loads like any shipped model
    assert model.task == "st" and (model.src_lang, model.tgt_lang) == ("en", "de")
    # the final model is the mean of the last two checkpoints, not the last weights
    expected = average_state_dicts([weights(out / "step4.pt"), weights(out / "step6.pt")])
    final = weights(out / "model.pt")
    assert_same(final, expected)
    assert any(not torch.equal(final[k], weights(out / "step6.pt")[k]) for k in final)
    assert read_checkpoint(out / "model.pt")["meta"]["averaged"] == ["step4.pt", "step6.pt"]
    # dev BLEU during training (steps 2 and 4) and on the final model
    history = [json.loads(line) for line in (out / "dev.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4] and all("bleu" in h and "chrf" in h for h in history)
    card = (out / "model.md").read_text()
    params = sum(v.numel() for v in final.values())
    for fact in ("Speech translation en -> de", "6 updates", f"{params / 1e6:.2f} M parameters", "CPU cores", "fp32",
                 "average of 2 checkpoints", "Final model, greedy offline decoding of", "| 4 |", "streamst train "):
        assert fact in card, fact


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(corpus, straight_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(corpus, out, "--steps", "3", "--save-every", "2", "--dev-every", "2", "--average-last", "2") == 0
    assert "resumed" not in capsys.readouterr().out
    # the folder holds a run: continuing needs --resume
    assert train(corpus, out, "--steps", "6") == 2
    assert "--resume" in capsys.readouterr().err
    # options of the saved run are kept; only the new step count is given
    assert main(["train", "--out", str(out), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert "resumed at step 3" in capsys.readouterr().out
    assert_same(weights(out / "last.state"), weights(straight_run / "last.state"))
    assert_same(weights(out / "step6.pt"), weights(straight_run / "step6.pt"))
    # the card shows how the run began (corpus, options) and then the resume
    command = next(line for line in (out / "model.md").read_text().splitlines() if line.startswith("- command:"))
    assert "--corpus" in command and "--steps 3" in command and "&& streamst train --out" in command, command
    # a resumed run cannot change the model
    assert main(["train", "--out", str(out), "--resume", "--d-model", "64", "--no-progress"]) == 2
    assert "d_model" in capsys.readouterr().err


def test_sigkill_loses_at_most_the_last_checkpoint_interval(corpus, straight_run, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "streamst.cli", "train", "--corpus", str(corpus), "--pair", "en-de", "--out", str(out),
           *MICRO, "--steps", "6", "--save-every", "2", "--dev-every", "2", "--average-last", "2"]
    # the same intra-op thread count as this process (other tests may have changed it), so float sums match
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not (out / "step2.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last.state").exists(), proc.stderr.read().decode()
    killed_at = torch.load(out / "last.state", weights_only=False)["step"]
    assert killed_at >= 2
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert_same(weights(out / "last.state"), weights(straight_run / "last.state"))


def test_bad_manifest_entries_are_reported_with_their_location_and_skipped(corpus, tmp_path, capsys):
    root = tmp_path / "corpus"
    shutil.copytree(corpus, root)
    txt = root / "en-de" / "data" / "train" / "txt"
    yaml_lines = (txt / "train.yaml").read_text().splitlines()
    en, de = (txt / "train.en").read_text().splitlines(), (txt / "train.de").read_text().splitlines()
    n = len(yaml_lines)
    yaml_lines[1] = "- {duration: 1.5, offset: [broken"  # unparsable line 2
    en[2] = ""  # empty transcript on line 3
    yaml_lines.append("- {duration: 1.0, offset: 0.0, speaker_id: x, wav: no_such_talk.wav}")  # missing wav
    en.append("A sentence without audio.")
    de.append("Ein Satz ohne Ton.")
    (txt / "train.yaml").write_text("\n".join(yaml_lines) + "\n")
    (txt / "train.en").write_text("\n".join(en) + "\n")
    (txt / "train.de").write_text("\n".join(de) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--corpus", str(root), "--out", str(out), *MICRO, "--steps", "1",
                 "--dev-segments", "0"]) == 0
    log = capsys.readouterr().out
    assert "train.yaml:2: unparsable entry" in log
    assert "train.en:3: empty transcript" in log
    assert f"train.yaml:{n + 1}: missing or unreadable wav" in log and "no_such_talk.wav" in log
    assert "3 bad manifest entries skipped" in log
    assert len((out / "skipped-train.txt").read_text().splitlines()) == 3
    card = (out / "model.md").read_text()
    assert f"{n - 2} training segments" in card and "3 manifest entries skipped" in card


def test_missing_corpus_pair_or_bad_options_give_clear_errors(corpus, tmp_path, capsys):
    assert main(["train", "--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main(["train", "--corpus", str(corpus), "--pair", "en-fr", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no en-fr/data/train" in err and "pairs found: en-de" in err
    assert main(["train", "--out", str(tmp_path / "c")]) == 2
    assert "--corpus is required" in capsys.readouterr().err
    assert main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "e"), "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "abcde")


def test_init_encoder_copies_the_asr_encoder_ctc_tokenizer_and_cmvn(corpus, tmp_path):
    # an English ASR corpus in the same layout: the en-de folder read as en-en (both sides from the .en file)
    root = tmp_path / "corpus"
    shutil.copytree(corpus / "en-de", root / "en-en")
    asr = tmp_path / "asr"
    assert main(["train", "--corpus", str(root), "--pair", "en-en", "--out", str(asr), *MICRO, "--steps", "2",
                 "--dev-segments", "2"]) == 0
    assert "WER" in (asr / "model.md").read_text()
    st = tmp_path / "st"
    # a near-zero learning rate: after one update the encoder is still the ASR encoder
    assert main(["train", "--corpus", str(corpus), "--out", str(st), *MICRO, "--d-model", "48", "--steps", "1",
                 "--lr", "1e-12", "--dev-segments", "0", "--init-encoder", str(asr / "model.pt")]) == 0
    a, s = read_checkpoint(asr / "model.pt"), read_checkpoint(st / "model.pt")
    assert s["config"]["d_model"] == 32  # the encoder's shape wins over --d-model
    assert s["src_tokenizer"] == a["src_tokenizer"] and s["tgt_tokenizer"] != a["tgt_tokenizer"]
    assert torch.equal(s["cmvn_mean"], a["cmvn_mean"])
    for k, v in a["state_dict"].items():
        if k.startswith(("encoder.", "ctc.")):
            assert torch.allclose(s["state_dict"][k], v, atol=1e-6), k
    assert "initialised from" in (st / "model.md").read_text()
    # the run keeps what it took from the ASR model: resuming does not need that file any more
    (asr / "model.pt").rename(tmp_path / "moved.pt")
    assert main(["train", "--out", str(st), "--resume", "--steps", "2", "--no-progress"]) == 0
    assert read_checkpoint(st / "model.pt")["config"]["d_model"] == 32


def test_init_model_fine_tunes_every_weight_and_time_limit_stops_and_finishes(corpus, straight_run, tmp_path, capsys):
    base = read_checkpoint(straight_run / "model.pt")
    out = tmp_path / "ft"
    # a near-zero learning rate and a limit already spent: the run stops at its first check, saves, averages and
    # writes its card, with the whole model (shape options ignored), both tokenizers and CMVN of the start model
    assert main(["train", "--corpus", str(corpus), "--out", str(out), *MICRO, "--d-model", "48", "--lr", "1e-12",
                 "--steps", "1000", "--time-limit", "0.0001", "--dev-segments", "0",
                 "--init-model", str(straight_run / "model.pt")]) == 0
    ft = read_checkpoint(out / "model.pt")
    assert ft["config"] == base["config"]
    assert ft["src_tokenizer"] == base["src_tokenizer"] and ft["tgt_tokenizer"] == base["tgt_tokenizer"]
    assert torch.equal(ft["cmvn_mean"], base["cmvn_mean"])
    for k, v in base["state_dict"].items():
        assert torch.allclose(ft["state_dict"][k], v, atol=1e-6), k
    steps = ft["meta"]["steps"]
    assert 0 <= steps < 5  # stopped by the clock, far short of --steps
    assert "fine-tuned" in (out / "model.md").read_text()
    assert f"--time-limit 0.0001 min reached at step {steps} of 1000" in capsys.readouterr().out
    assert main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "both"), *MICRO, "--steps", "1",
                 "--init-model", str(straight_run / "model.pt"), "--init-encoder", str(straight_run / "model.pt")]) == 2
    assert "not both" in capsys.readouterr().err


def test_ctc_only_pretraining_leaves_the_decoder_alone_and_scores_the_ctc_head(corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(corpus / "en-de", root / "en-en")
    out = tmp_path / "ctc"
    assert main(["train", "--corpus", str(root), "--pair", "en-en", "--out", str(out), *MICRO, "--steps", "2",
                 "--save-every", "1", "--average-last", "1", "--ctc-weight", "1.0", "--dev-segments", "3",
                 "--dev-every", "1", "--lr", "1e-2"]) == 0
    first, second = weights(out / "step1.pt"), weights(out / "step2.pt")
    changed = {k for k in first if not torch.equal(first[k], second[k])}
    assert changed and all(k.startswith(("encoder.", "ctc.")) for k in changed), sorted(changed)[:5]
    history = [json.loads(line) for line in (out / "dev.jsonl").read_text().splitlines()]
    assert history and all("wer" in h for h in history)


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_through_torchrun_train_one_model(corpus, tmp_path):
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "streamst.cli", "train", "--corpus", str(corpus),
                             "--out", str(out), *MICRO, "--steps", "2", "--save-every", "1", "--dev-segments", "0",
                             "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model: ") == 1  # rank 0 alone reports and writes
    assert [p.name for p in step_checkpoints(out)] == ["step1.pt", "step2.pt"]
    assert "2 processes on" in (out / "model.md").read_text()
    load_model(str(out / "model.pt"))
