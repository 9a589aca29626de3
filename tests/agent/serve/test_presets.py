"""`agent serve` options for the agent workload: KV-cache dtype, sequences at once, the prefill budget,
and `--preset agent`. Every flag maps to one ServeOptions field and one vLLM flag; the preset fills
only what the command line leaves out. End to end through the real command line, with a stand-in
`vllm` package whose server is tests/fakes/fake_vllm.py (a real child process) and a fake nvidia-smi."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.serve.checks import check_fit, visible_gpus
from agent.serve.launcher import ServeOptions, build_command
from agent.serve.presets import PRESETS, fill_from_preset
from tests.agent.serve.test_launcher import FAKE_VLLM, H100_MIB, H200_MIB, free_port, gpu_env, model_dir


def flags(options: ServeOptions) -> dict[str, str]:
    """The command's `--flag value` pairs (bare flags map to '')."""
    command = build_command(options)
    pairs: dict[str, str] = {}
    for index, word in enumerate(command):
        if word.startswith("--"):
            following = command[index + 1] if index + 1 < len(command) else ""
            pairs[word] = "" if following.startswith("--") else following
    return pairs


def test_each_option_is_one_vllm_flag(tmp_path: Path) -> None:
    plain = flags(ServeOptions(model="/m", state_dir=tmp_path))
    assert not {"--kv-cache-dtype", "--max-num-seqs", "--max-num-batched-tokens", "--quantization"} & set(plain)
    given = flags(ServeOptions(model="/m", state_dir=tmp_path, kv_cache_dtype="fp8", max_num_seqs=32,
                               max_num_batched_tokens=4096))
    assert (given["--kv-cache-dtype"], given["--max-num-seqs"], given["--max-num-batched-tokens"]) == (
        "fp8", "32", "4096")
    assert "--quantization" not in given


def test_the_agent_preset_fills_what_is_not_given_and_explicit_options_win(tmp_path: Path) -> None:
    preset = flags(ServeOptions(model="/m", state_dir=tmp_path, preset="agent"))
    assert (preset["--quantization"], preset["--kv-cache-dtype"], preset["--max-num-seqs"],
            preset["--max-num-batched-tokens"]) == ("fp8", "fp8", "64", "8192")
    mixed = ServeOptions(model="/m", state_dir=tmp_path, preset="agent", kv_cache_dtype="auto", max_num_seqs=16)
    assert (mixed.kv_cache_dtype, mixed.max_num_seqs, mixed.quantization) == ("auto", 16, "fp8")
    assert fill_from_preset({"preset": None, "max_num_seqs": None}) == {"preset": None, "max_num_seqs": None}
    with pytest.raises(ValueError, match="preset"):
        ServeOptions(model="/m", preset="chat")
    with pytest.raises(ValueError):
        ServeOptions(model="/m", max_num_seqs=0)
    assert set(PRESETS["agent"]) <= set(ServeOptions.model_fields)  # a preset only names real fields


def test_fp8_kv_cache_halves_the_kv_part_of_the_fit(tmp_path: Path) -> None:
    gpus = visible_gpus(gpu_env(tmp_path, [H100_MIB]))
    folder = model_dir(tmp_path)
    bf16 = check_fit(folder, 1, 131072, 0.9, gpus, "fp8")
    fp8 = check_fit(folder, 1, 131072, 0.9, gpus, "fp8", "fp8")
    assert "FP8 KV cache" in fp8 and "FP8 KV cache" not in bf16
    kv = [float(text.split(" GiB KV")[0].split("+ ")[-1]) if "GiB KV" in text else
          float(text.split(" GiB FP8 KV")[0].split("+ ")[-1]) for text in (bf16, fp8)]
    assert kv[1] == pytest.approx(kv[0] / 2, abs=0.1)


def fake_vllm_package(folder: Path) -> Path:
    """A `vllm` package whose `python -m vllm.entrypoints.cli.main serve ...` runs the fake server."""
    cli = folder / "vllm" / "entrypoints" / "cli"
    cli.mkdir(parents=True)
    for package in (folder / "vllm", folder / "vllm" / "entrypoints", cli):
        (package / "__init__.py").write_text("")
    (cli / "main.py").write_text(
        "import runpy, sys\n"
        "assert sys.argv[1] == 'serve'\n"
        "sys.argv = [sys.argv[0], *sys.argv[2:]]\n"
        f"runpy.run_path({str(FAKE_VLLM)!r}, run_name='__main__')\n")
    return folder


def test_agent_serve_preset_reaches_vllm_through_the_command_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    site = fake_vllm_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    record = tmp_path / "record"
    record.mkdir()
    for name, value in {**gpu_env(tmp_path, [H200_MIB]), "PYTHONPATH": str(site), "FAKE_VLLM_RECORD": str(record),
                        "FAKE_VLLM_LIFETIME": "1.5"}.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    result = CliRunner().invoke(app, [
        "serve", "--model", str(model_dir(tmp_path)), "--port", str(port), "--max-model-len", "32768",
        "--preset", "agent", "--max-num-seqs", "48", "--enforce-eager"])
    assert result.exit_code == 0, result.output
    argv = json.loads((record / "argv.json").read_text())
    pairs = dict(zip(argv, [*argv[1:], ""], strict=False))
    assert (pairs["--quantization"], pairs["--kv-cache-dtype"], pairs["--max-num-seqs"],
            pairs["--max-num-batched-tokens"], pairs["--port"]) == ("fp8", "fp8", "48", "8192", str(port))
    assert argv[-1] == "--enforce-eager"
    assert f"serving cwm at http://127.0.0.1:{port}/v1" in result.output
