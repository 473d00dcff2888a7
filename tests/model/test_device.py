"""Devices and precision. Each device test runs on every device torch sees here: the CPU
always, CUDA and MPS where present (skipped with a reason elsewhere, never failed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deepvibe.model.device as device_module
from conftest import DEVICES, MPS
from deepvibe.errors import ConfigError
from deepvibe.model.device import autocast, model_device, resolve_device, resolve_precision
from deepvibe.model.inference import encode_and_score
from deepvibe.model.vae import HybridVAE, VAEArch


def test_auto_prefers_cuda_then_mps_then_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if MPS else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="train.device"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_inference_on_device_matches_cpu(device: str) -> None:
    torch.manual_seed(0)
    model = HybridVAE(VAEArch(30, 3, (16,), 4))
    plays = np.zeros((3, 30), dtype=np.float32)
    plays[0, :5], plays[1, 10:20] = 2, 1
    feats = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    mu_cpu, s_cpu = encode_and_score(model, plays, feats)
    model.to(resolve_device(device))
    assert model_device(model).type == device
    mu, s = encode_and_score(model, plays, feats)  # NumPy back on the host
    assert np.allclose(mu, mu_cpu, atol=1e-4) and np.allclose(s, s_cpu, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_stays_close_to_fp32(device: str) -> None:
    where = resolve_device(device)
    torch.manual_seed(0)
    model = HybridVAE(VAEArch(200, 0, (64,), 16)).to(where)
    x = (torch.rand(8, 200) > 0.9).float().to(where)
    profile = torch.zeros(8, 0, device=where)
    with autocast(where, "fp32"):
        full = model.encode(x, profile)[0]
    with autocast(where, "bf16"):
        half = model.encode(x, profile)[0]
    assert half.dtype == torch.bfloat16  # the matrix products really ran in bf16
    assert torch.allclose(half.float(), full, atol=0.05, rtol=0.05)
    assert not torch.equal(half.float(), full)


@pytest.mark.parametrize("device", DEVICES)
def test_a_users_scores_do_not_depend_on_the_rest_of_the_batch(device: str) -> None:
    # Batch discovery must write the reports a user gets alone; on CUDA an atomic row sum
    # (index_add_) made the audio profile depend on the other rows' entries.
    torch.manual_seed(0)
    model = HybridVAE(VAEArch(500, 12, (64,), 16)).to(resolve_device(device))
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(500, 12)).astype(np.float32)
    plays = (rng.random((64, 500)) > 0.8) * rng.integers(1, 50, size=(64, 500))
    alone = plays.copy()
    alone[1:] = 0  # the same first user with an empty rest of the tile
    alone[1:, :3] = 1
    mu_batch, s_batch = encode_and_score(model, plays.astype(np.float32), feats)
    mu_alone, s_alone = encode_and_score(model, alone.astype(np.float32), feats)
    assert np.array_equal(mu_batch[0], mu_alone[0]) and np.array_equal(s_batch[0], s_alone[0])


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device_module, "native_bf16", lambda d, n=native: n)
        assert resolve_precision("auto", cpu) == expected
        assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("fp16", cpu)


def test_native_bf16_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for bf16, amx, expected in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert device_module.native_bf16(cpu) is expected
    assert device_module.native_bf16(torch.device("meta")) is False
