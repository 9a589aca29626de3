"""Give a CWM-shaped model folder a real text tokenizer whose special tokens carry CWM's ids.

Why: the model folders made for the lent GPU machines (shared/gpu/mkmodel.py) come with a stand-in
tokenizer that only serves token-id prompts. An agent episode sends TEXT (the runner renders CWM's
chat layout itself), and the stop tokens, the header tokens and the prefix cache only behave as they
will with the real model if `<|eot_id|>` is id 128009 and so on. This trains a byte-level BPE on
local text (Python's own sources by default), pads the learned vocabulary to exactly 128000 ids,
then adds CWM's special tokens at 128000 and up (reserved names fill the gaps) so the total equals
the model's `vocab_size`. The weights are random or dummy anyway; only the ids must line up.

Usage (on the GPU machine, after device-step1.sh made /tmp/cwm-tiny):
    python3 bench/gpu/mktokenizer.py /tmp/cwm-tiny [--bpe-vocab-size 32000] [--corpus DIR ...]

Needs only the `tokenizers` library (the GPU image has it, as transformers does). Writes
tokenizer.json, tokenizer_config.json and special_tokens_map.json into the folder, replacing the
stand-in's.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

FIRST_SPECIAL_ID = 128000
# ../docs/cwm-protocol.md, sections 1 and 7.
CWM_SPECIAL_TOKENS = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128004: "<|pad|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128100: "<|frame_sep|>",
    128101: "<|action_sep|>",
    128102: "<|return_sep|>",
    128103: "<|call_sep|>",
    128104: "<|line_sep|>",
    128105: "<|exception_sep|>",
    128106: "<|arg_sep|>",
    128107: "<|trace_context_start|>",
}
BOS, EOS, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|pad|>"


def special_token_names(vocab_size: int) -> list[str]:
    """Names for ids FIRST_SPECIAL_ID .. vocab_size-1: CWM's where it has one, reserved otherwise."""
    return [CWM_SPECIAL_TOKENS.get(i, f"<|reserved_special_token_{i - FIRST_SPECIAL_ID}|>")
            for i in range(FIRST_SPECIAL_ID, vocab_size)]


def read_vocab_size(model_dir: Path) -> tuple[int, int]:
    """(vocab_size, max_position_embeddings) from the model's config.json."""
    config = json.loads((model_dir / "config.json").read_text())
    config = config.get("text_config", config)
    return int(config["vocab_size"]), int(config.get("max_position_embeddings", 131072))


def corpus_texts(folders: list[Path], max_bytes: int) -> Iterator[str]:
    """Python sources under `folders`, in a stable order, up to about `max_bytes`."""
    total = 0
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            if "site-packages" in path.parts or not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            yield text
            total += len(text)
            if total >= max_bytes:
                return


def train_bpe(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2/Llama-3 style: every byte is a token, so any text encodes)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def pad_vocab(tokenizer: Tokenizer, size: int) -> Tokenizer:
    """The same tokenizer with filler entries up to `size` ids; merges never produce them."""
    data = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise SystemExit("the trained vocabulary's ids are not contiguous")
    if len(vocab) > size:
        raise SystemExit(f"the trained vocabulary has {len(vocab)} tokens, more than {size}")
    for token_id in range(len(vocab), size):
        vocab[f"<|bpe_filler_{token_id}|>"] = token_id
    return Tokenizer.from_str(json.dumps(data))


def build(model_dir: Path, corpus: list[Path], bpe_vocab_size: int, max_corpus_bytes: int) -> Tokenizer:
    vocab_size, max_len = read_vocab_size(model_dir)
    highest = max(CWM_SPECIAL_TOKENS)
    if vocab_size <= highest:
        raise SystemExit(f"{model_dir}/config.json has vocab_size {vocab_size}, too small for CWM's special "
                         f"ids (up to {highest}): use a CWM-shaped model (vocab_size 128256)")
    tokenizer = train_bpe(corpus_texts(corpus, max_corpus_bytes), min(bpe_vocab_size, FIRST_SPECIAL_ID))
    learned = tokenizer.get_vocab_size(with_added_tokens=False)
    tokenizer = pad_vocab(tokenizer, FIRST_SPECIAL_ID)
    names = special_token_names(vocab_size)
    tokenizer.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    for token_id, name in enumerate(names, FIRST_SPECIAL_ID):
        if tokenizer.token_to_id(name) != token_id:
            raise SystemExit(f"{name} got id {tokenizer.token_to_id(name)}, not {token_id}")
    if tokenizer.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise SystemExit(f"vocabulary is {tokenizer.get_vocab_size(with_added_tokens=True)}, not {vocab_size}")
    save(tokenizer, model_dir, names, max_len)
    print(f"{model_dir}: {learned} learned BPE tokens, {FIRST_SPECIAL_ID - learned} fillers, "
          f"{len(names)} special tokens (ids {FIRST_SPECIAL_ID}-{vocab_size - 1}); vocabulary {vocab_size}")
    return tokenizer


def save(tokenizer: Tokenizer, model_dir: Path, names: list[str], max_len: int) -> None:
    """tokenizer.json plus the two small files transformers (and so vLLM) reads beside it."""
    tokenizer.save(str(model_dir / "tokenizer.json"))
    added = {str(i): {"content": n, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False, "special": True} for i, n in enumerate(names, FIRST_SPECIAL_ID)}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (model_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="folder with the model's config.json")
    parser.add_argument("--bpe-vocab-size", type=int, default=FIRST_SPECIAL_ID,
                        help="learned tokens (at most 128000; the rest up to 128000 are fillers)")
    parser.add_argument("--corpus", type=Path, action="append",
                        help="folder of *.py files to learn from (default: this Python's standard library)")
    parser.add_argument("--max-corpus-mb", type=float, default=16.0)
    args = parser.parse_args(argv)
    corpus = args.corpus or [Path(sysconfig.get_paths()["stdlib"])]
    started = time.monotonic()
    tokenizer = build(args.model_dir, corpus, args.bpe_vocab_size, int(args.max_corpus_mb * 1e6))
    sample = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    print(f"done in {time.monotonic() - started:.1f} s; {sample!r} -> {tokenizer.encode(sample).ids}")


if __name__ == "__main__":
    main()
