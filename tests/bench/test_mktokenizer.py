"""bench/gpu/mktokenizer.py, run as the program it is, on a small learned vocabulary but the real
CWM vocabulary size: the special tokens must carry CWM's ids and the total must match config.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

tokenizers = pytest.importorskip("tokenizers")

REPO = REPO_ROOT
SCRIPT = REPO / "bench" / "gpu" / "mktokenizer.py"
CWM_IDS = {
    "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|pad|>": 128004, "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009, "<|frame_sep|>": 128100,
    "<|action_sep|>": 128101, "<|return_sep|>": 128102, "<|call_sep|>": 128103, "<|line_sep|>": 128104,
    "<|exception_sep|>": 128105, "<|arg_sep|>": 128106, "<|trace_context_start|>": 128107,
}


def make_model(folder: Path, vocab_size: int = 128256) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["CwmForCausalLM"], "model_type": "cwm", "transformers_version": "5.17.0",
        "vocab_size": vocab_size, "max_position_embeddings": 131072}))
    # what the stand-in tokenizer left behind, to be replaced
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "t128000"}))
    return folder


def run(model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(model), "--bpe-vocab-size", "800",
                           "--corpus", str(REPO / "agent"), "--corpus", str(REPO / "tools"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = make_model(tmp_path_factory.mktemp("tok") / "cwm-tiny")
    done = run(model)
    assert done.returncode == 0, done.stderr
    assert "vocabulary 128256" in done.stdout
    return model


def test_special_tokens_carry_cwm_ids(built: Path) -> None:
    tokenizer = tokenizers.Tokenizer.from_file(str(built / "tokenizer.json"))
    for token, token_id in CWM_IDS.items():
        assert tokenizer.token_to_id(token) == token_id, token
        assert tokenizer.encode(token).ids == [token_id]
    assert tokenizer.id_to_token(128002) == "<|reserved_special_token_2|>"
    assert tokenizer.id_to_token(128255) == "<|reserved_special_token_255|>"
    assert tokenizer.get_vocab_size(with_added_tokens=True) == 128256


def test_text_round_trips_and_the_chat_layout_tokenizes_as_cwm_expects(built: Path) -> None:
    tokenizer = tokenizers.Tokenizer.from_file(str(built / "tokenizer.json"))
    prompt = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nFix the bug in café.py:\n"
              "    def f(x):\n        return x  # ✓<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
    ids = tokenizer.encode(prompt).ids
    assert ids[:2] == [128000, 128006] and 128009 in ids and ids.count(128007) == 2
    assert max(i for i in ids if i < 128000) < 800  # only learned tokens, never fillers
    assert tokenizer.decode(ids, skip_special_tokens=False) == prompt
    text = "x = {'a': [1, 2]}\n\tprint(\"ünïcode\", x)\r\n"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_config_files_name_the_special_tokens(built: Path) -> None:
    config = json.loads((built / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<|begin_of_text|>", "<|eot_id|>",
                                                                               "<|pad|>")
    assert config["model_max_length"] == 131072
    assert config["added_tokens_decoder"]["128009"]["content"] == "<|eot_id|>"
    assert len(config["added_tokens_decoder"]) == 256
    assert json.loads((built / "special_tokens_map.json").read_text())["bos_token"] == "<|begin_of_text|>"


def test_transformers_loads_it_when_installed(built: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(built))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (128000, 128009, 128004)
    assert len(tokenizer) == 128256
    assert tokenizer("<|eot_id|>", add_special_tokens=True)["input_ids"] == [128009]  # adds no BOS of its own


def test_a_vocabulary_too_small_for_cwm_ids_is_refused(tmp_path: Path) -> None:
    model = make_model(tmp_path / "small", vocab_size=32000)
    done = run(model)
    assert done.returncode != 0
    assert "vocab_size 32000, too small for CWM's special ids" in done.stderr
    assert not (model / "tokenizer.json").exists()
