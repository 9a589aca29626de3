"""`agent serve`: vLLM for CWM on a GPU host (the launcher is agent.serve; vLLM is the `serve` extra)."""

from __future__ import annotations

from typing import Optional

import typer

from agent.cli.common import default_of, fail
from agent.serve.launcher import ServeOptions


def serve(
    ctx: typer.Context,
    model: str = typer.Option(..., help="model folder or Hugging Face name (e.g. facebook/cwm)"),
    tp: int = typer.Option(default_of(ServeOptions, "tp"), help="tensor-parallel size: GPUs to spread the model over"),
    port: int = typer.Option(default_of(ServeOptions, "port"), help="port of the OpenAI-compatible server"),
    host: str = typer.Option(default_of(ServeOptions, "host"), help="address to bind"),
    max_model_len: int = typer.Option(default_of(ServeOptions, "max_model_len"), help="context length (CWM: 131072)"),
    gpu_memory_utilization: float = typer.Option(default_of(ServeOptions, "gpu_memory_utilization"),
                                                 help="share of each GPU's memory vLLM may take"),
    served_model_name: str = typer.Option(default_of(ServeOptions, "served_model_name"),
                                          help="model name clients ask for"),
    load_format: str = typer.Option(default_of(ServeOptions, "load_format"),
                                    help="'dummy' serves random weights (speed tests)"),
    quantization: Optional[str] = typer.Option(None, help="fp8: FP8 linear layers, quantized while loading "
                                                          "(half the bytes per token; Hopper GPUs)"),
    kv_cache_dtype: Optional[str] = typer.Option(None, help="fp8: KV cache in FP8 (twice the cached tokens); "
                                                            "auto: the model's dtype"),
    max_num_seqs: Optional[int] = typer.Option(None, help="most sequences decoded at once (vLLM's default)"),
    max_num_batched_tokens: Optional[int] = typer.Option(None, help="tokens per scheduler step: the "
                                                                    "chunked-prefill budget (vLLM's default)"),
    preset: Optional[str] = typer.Option(None, help="agent: FP8 weights + FP8 KV cache, 64 sequences, 8192-token "
                                                    "chunks (docs/benchmarks.md); explicit options win"),
) -> None:
    """Serve CWM with vLLM (prefix caching, CWM's stop tokens) until Ctrl-C; extra args go to vLLM."""
    from agent.serve.launcher import ServeError, run_server

    if quantization not in (None, "fp8"):
        fail(f"unknown --quantization {quantization!r}; choose fp8 (or leave it out for bf16)")
    # Options left unset stay out, so a preset (or ServeOptions' default) fills them.
    chosen = {name: value for name, value in (
        ("quantization", quantization), ("kv_cache_dtype", kv_cache_dtype), ("max_num_seqs", max_num_seqs),
        ("max_num_batched_tokens", max_num_batched_tokens), ("preset", preset)) if value is not None}
    try:
        options = ServeOptions(
            model=model, tp=tp, port=port, host=host, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization, served_model_name=served_model_name,
            load_format=load_format, extra_args=list(ctx.args), **chosen,
        )
        code = run_server(options)
    except ServeError as error:
        fail(str(error).splitlines()[0])
    except ValueError as error:
        fail(str(error))
    raise typer.Exit(code)
