"""Device support: native bfloat16 (`--mixed_precision auto`), the fused AdamW."""

import pytest
import torch

from maskmatch_hf.hardware import fused_adamw_kwargs, native_bf16, resolve_mixed_precision
from maskmatch_hf.objective import MaskMatchObjective

from .conftest import tiny_model
from .test_objective import run


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(False, False), (True, False), (False, True)])
def test_auto_mixed_precision_is_bf16_where_the_cpu_has_native_bfloat16(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    native = avx512_bf16 or amx
    assert native_bf16("cpu") is native
    assert resolve_mixed_precision("auto", torch.device("cpu")) == ("bf16" if native else "no")
    assert native_bf16("meta") is False and resolve_mixed_precision("auto", "meta") == "no"
    # Every other value, None (the accelerate config's) included, is accelerate's to take as it is.
    assert [resolve_mixed_precision(value, "cpu") for value in ("no", "fp16", "bf16", None)] == [
        "no",
        "fp16",
        "bf16",
        None,
    ]


def test_fused_adamw_where_pytorch_has_it():
    assert fused_adamw_kwargs("cpu") == {"fused": True}  # torch >= 2.4
    assert fused_adamw_kwargs(torch.device("cuda", 0)) == {"fused": True}
    assert fused_adamw_kwargs("meta") == {}
    model = tiny_model("upernet")
    optimizer = torch.optim.AdamW(model.parameters(), **fused_adamw_kwargs("cpu"))
    run(MaskMatchObjective(model).train()).loss.backward()
    optimizer.step()
